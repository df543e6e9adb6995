"""Local stand-ins for AWS, for one machine with no Docker and no account.

- :mod:`~services.local.s3server`: moto's S3 API server on loopback.
- :mod:`~services.local.runtime`: a Lambda (the Invoke API in front of warm sandboxes running the
  real runtime interface client).
- :mod:`~services.local.stack`: the one-machine stack that starts, records, reattaches and stops
  them; :mod:`~services.local.seeding` puts demo data where the users' payload looks.
- :mod:`~services.local.processes`: how every local server is started as a child process, awaited
  and stopped (the stack, the S3 server, the demo's coordinator, the benchmarks and the tests).

Nothing here imports the coordinator: the coordinator reaches these services through the same
boto3 endpoints it uses on AWS.
"""
