"""Cosmic Rendezvous: distributed serverless inference for astronomy.

One package, one subpackage per service (``rendezvous``, later ``worker`` and ``coordinator``);
each service imports only its own dependencies, installed through its own extra.
"""

__version__ = "0.1.0"
