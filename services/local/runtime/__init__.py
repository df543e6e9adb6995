"""A local AWS Lambda: the Invoke API in front, the Lambda Runtime API behind, to a pool of warm
sandboxes running the real runtime interface client (``python -m awslambdaric``).

Standard library only, so that it runs wherever the worker does (plain process, container).
"""
