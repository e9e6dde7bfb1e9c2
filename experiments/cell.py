"""One cell of a study: a Flower simulation of the project's apps, run in this process.

``python -m experiments.cell '<json>'`` with ``{"overrides": {...}, "num_supernodes": N}``
and optionally ``"flower_polling": "pending"`` (:mod:`experiments.flower_polling`).
:mod:`experiments.grid` starts it, one process per cell; it is not meant to be run by hand.
"""

from __future__ import annotations

import json
import sys

from flwr.simulation import run_simulation

from client.app import build_client_app
from experiments.flower_polling import poll_pending_nodes
from server.app import build_server_app

CLIENT_CPUS = 1
"""CPUs per simulated UAV, as in the project's local-simulation federation."""


def main(argv: list[str]) -> None:
    """Run the simulation described by the JSON in ``argv[0]``."""
    spec = json.loads(argv[0])
    overrides = spec["overrides"]
    if spec.get("flower_polling", "stock") == "pending":
        poll_pending_nodes()
    run_simulation(
        server_app=build_server_app(overrides),
        client_app=build_client_app(overrides),
        num_supernodes=int(spec["num_supernodes"]),
        backend_config={"client_resources": {"num_cpus": CLIENT_CPUS}},
    )


if __name__ == "__main__":
    main(sys.argv[1:])
