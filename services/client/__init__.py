"""The ``cosmic`` command line's client side: job commands over the coordinator's HTTP API.

Job commands (submit, status, cancel, retry, logs, report, sweep, demo) reach jobs through the
HTTP API alone (:mod:`~services.client.api`); commands about the data itself (``cosmic data``,
:mod:`~services.client.datasets`, and ``sweep --generate``) go to S3 with the user's own
credentials, since the API is no place for 100 MB bodies.
"""
