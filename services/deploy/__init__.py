"""``cosmic deploy``: the three images to ECR, the stacks of ``infra/`` to CloudFormation, a smoke test.

Only the machine that deploys needs this package (the ``deploy`` extra: boto3, the docker SDK,
PyYAML); no service imports it.
"""
