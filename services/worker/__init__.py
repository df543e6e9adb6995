"""The worker service: the Lambda handler and the inference engine it runs."""
