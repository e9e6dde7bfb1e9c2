"""Deployment tooling: SuperLink and SuperNode processes, certificates and keys.

Used by ``python -m deploy.federation`` (a local federation of real processes),
``python -m deploy.certs`` (CA, server certificate, SuperNode keys) and ``docker/``.
"""
