"""The worker service: the local Lambda runtime (and, later, the inference handler it serves)."""
