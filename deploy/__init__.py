"""Deployment tooling: SuperLink and SuperNode processes, certificates and keys.

Used by ``python -m deploy.federation`` (a local federation of real processes),
``python -m deploy.certs`` (CA, server certificate, SuperNode keys) and ``docker/``.
``python -m server.federation`` and ``python -m server.certs`` are aliases of both.

- :mod:`deploy.federation`: :class:`~deploy.federation.LocalFederation` and the command line;
- :mod:`deploy.arguments`: the command line's sub-commands and their checks;
- :mod:`deploy.processes`: processes named by PID and start time, started and stopped;
- :mod:`deploy.supervision`: which deaths a running federation survives (a SuperNode's);
- :mod:`deploy.ports`: free ports, the Flower command lines, ``FLWR_HOME``, the app copy;
- :mod:`deploy.outputs`: the run's log lines, and whether a finished run succeeded;
- :mod:`deploy.ray_cluster`: a Ray head and nodes started with ``ray start``, stopped by PID;
- :mod:`deploy.certs`: the CA, the SuperLink's certificate and SuperNode key pairs.
"""
