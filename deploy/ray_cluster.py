"""A Ray cluster of separate nodes on one machine, for ``flwr run`` to join, stopped by PID.

Flower 1.41's simulation calls ``ray.init()`` without an address when it starts
(``flwr/server/superlink/fleet/vce/backend/raybackend.py``, ``RayBackend.init_ray``), so
Ray joins the cluster that ``RAY_ADDRESS`` names instead of starting its own. The README's
"Scale out" recipe starts that cluster on several machines: ``ray start --head`` on one,
``ray start --address=<head>:<port>`` on the others. :class:`LocalRayCluster` does the
same on this machine, each node a separate set of processes with its own CPUs, its own
custom resource (``qfl_<name>``: one unit, so ``ray.nodes()`` tells the nodes apart) and
its own temp dir (its sockets, its session's logs), and stops exactly the processes it
started.

Every node gets its own ``--temp-dir`` under :attr:`LocalRayCluster.root` for three
reasons: ``ray start`` with the default temp dir writes ``/tmp/ray/ray_current_cluster``,
and every later ``ray.init()`` on the machine without ``RAY_ADDRESS`` (any other Flower
simulation, another test) would then join this cluster instead of starting its own; the
node's processes can be found by that path (:func:`deploy.processes.processes_mentioning`,
also in their environment: :data:`MARKER_ENV`); and each node's worker logs are apart,
which is how :meth:`LocalRayCluster.client_app_calls` tells which node ran a ClientApp.
All ports are chosen free (:func:`deploy.ports.free_port`): Ray's defaults (6379, 8265,
10001, 52365) would collide with a second node on the same machine or another Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.ports import free_port
from deploy.processes import (
    FederationError,
    ProcessRef,
    children_map,
    command_line,
    processes_mentioning,
    stop_processes,
)

RAY_START = (sys.executable, "-m", "ray.scripts.scripts", "start")
"""``ray start`` of this Python environment (the one whose Ray ``flwr run`` imports)."""
MARKER_ENV = "QFL_RAY_CLUSTER"
"""Set to the cluster's root in the environment of its ``ray start`` processes, so every
process they start (and every worker a raylet starts) carries it."""
MAX_ROOT_CHARS = 40
"""Longest :attr:`LocalRayCluster.root`: Ray's sockets live at
``<temp-dir>/session_<date>_<time>_<pid>/sockets/plasma_store`` and a Unix socket path
has at most 107 bytes (a pytest ``tmp_path`` is too long)."""
CLIENT_APP_CALL = "run"
"""The name Ray's timeline gives a call of Flower's ``ClientAppActor.run``: one ClientApp
handling one message (``flwr/simulation/ray_transport/ray_actor.py``)."""

_PROBE = """
import json, sys, ray
ray.init(logging_level="ERROR", log_to_driver=False)
nodes = [{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]}
         for n in ray.nodes()]
calls = {}
for event in ray.timeline():
    if event.get("name") == sys.argv[1] and str(event.get("tid", "")).startswith("worker:"):
        worker = event["tid"].split(":", 1)[1]
        calls[worker] = calls.get(worker, 0) + 1
print(json.dumps({"nodes": nodes, "calls": calls}))
"""


@dataclass(frozen=True)
class RayNode:
    """One ``ray start`` of the cluster: its name, temp dir and custom resource."""

    name: str
    temp_dir: Path
    num_cpus: int

    @property
    def resource(self) -> str:
        """The custom resource (one unit) that only this node has."""
        return f"qfl_{self.name}"

    def worker_ids(self) -> set[str]:
        """Ids of the Ray workers this node has started (from their log files'
        names, ``worker-<worker id>-<job id>-<pid>.out``, Ray's logging layout)."""
        return {
            path.name.split("-")[1]
            for path in self.temp_dir.glob("session_*/logs/worker-*.out")
        }


class LocalRayCluster:
    """A head and further nodes started with ``ray start`` under ``root``, stopped by PID.

    Parameters
    ----------
    root : Path
        An empty folder of its own, at most :data:`MAX_ROOT_CHARS` long (for example
        ``tempfile.mkdtemp(prefix="qflray-", dir="/tmp")``); each node's temp dir is a
        subfolder, and every process of the cluster carries this path.
    object_store_memory : int
        Bytes of each node's object store (Ray's default is 30% of the machine's memory
        per node; Flower's messages here are kilobytes).
    """

    def __init__(self, root: Path, object_store_memory: int = 256 * 2**20) -> None:
        root = Path(root).resolve()
        if len(str(root)) > MAX_ROOT_CHARS:
            raise FederationError(
                f"Ray cluster root {root} is {len(str(root))} characters long; use a folder "
                f"of at most {MAX_ROOT_CHARS} (Ray's socket paths must fit in 107 bytes)"
            )
        self.root = root
        self.object_store_memory = object_store_memory
        self.nodes: list[RayNode] = []
        self.address: str | None = None

    def environment(self) -> dict[str, str]:
        """The environment of the ``ray start`` commands (no ``RAY_ADDRESS`` of the caller's)."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env[MARKER_ENV] = str(self.root)
        return env

    def start_head(self, num_cpus: int = 1, name: str = "head") -> RayNode:
        """``ray start --head`` with ``num_cpus`` CPUs; sets :attr:`address`."""
        if self.nodes:
            raise FederationError(f"the cluster under {self.root} already has a head")
        node = self._start(name, num_cpus, [
            "--head", "--port", str(free_port()),
            "--include-dashboard=false", "--dashboard-port", str(free_port()),
            "--ray-client-server-port", str(free_port()),
        ])
        # `ray start` writes the address it told the user to its own temp dir.
        self.address = (node.temp_dir / "ray_current_cluster").read_text().strip()
        return node

    def add_node(self, num_cpus: int = 1, name: str | None = None) -> RayNode:
        """``ray start --address=<head>`` with ``num_cpus`` CPUs (name: ``node<i>``)."""
        if self.address is None:
            raise FederationError("start the head (start_head) before adding nodes")
        return self._start(name or f"node{len(self.nodes)}", num_cpus,
                           ["--address", self.address])

    def _start(self, name: str, num_cpus: int, role: list[str]) -> RayNode:
        if any(node.name == name for node in self.nodes):
            raise FederationError(f"the cluster already has a node named {name!r}")
        node = RayNode(name, self.root / name, num_cpus)
        node.temp_dir.mkdir(parents=True)
        command = [
            *RAY_START, *role,
            "--num-cpus", str(num_cpus),
            "--resources", json.dumps({node.resource: 1}),
            "--temp-dir", str(node.temp_dir),
            "--object-store-memory", str(self.object_store_memory),
            "--disable-usage-stats",
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
        ]
        done = subprocess.run(
            command, env=self.environment(), capture_output=True, text=True, timeout=180,
            start_new_session=True,
        )
        self.nodes.append(node)  # listed even on failure: stop() finds it by its path
        if done.returncode != 0:
            raise FederationError(
                f"`ray start` of node {name!r} exited with code {done.returncode}:\n"
                + (done.stdout + done.stderr)[-3000:]
            )
        return node

    def probe(self, timeout: float = 120) -> dict[str, Any]:
        """Ask the cluster, from a Ray driver of its own (a subprocess): its nodes
        (``ray.nodes()``) and the ClientApp calls each Ray worker made (``ray.timeline()``)."""
        if self.address is None:
            raise FederationError("the cluster has no head")
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, CLIENT_APP_CALL],
            env={**self.environment(), "RAY_ADDRESS": self.address},
            capture_output=True, text=True, timeout=timeout, cwd=self.root,
        )
        if done.returncode != 0:
            raise FederationError(f"probing the Ray cluster failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def alive_nodes(self) -> dict[str, dict[str, float]]:
        """The resources of every live node, by the name of the node that has its resource."""
        named: dict[str, dict[str, float]] = {}
        for entry in self.probe()["nodes"]:
            if not entry["alive"]:
                continue
            names = [node.name for node in self.nodes if node.resource in entry["resources"]]
            named[names[0] if names else entry["id"]] = entry["resources"]
        return named

    def client_app_calls(self) -> dict[str, int]:
        """How many ClientApp calls (one message each) ran on each node, by node name.

        From Ray's timeline (the ``run`` calls of Flower's ClientAppActor, per worker) and
        each node's worker logs (which worker is whose). Ask before :meth:`stop`.
        """
        per_worker: dict[str, int] = self.probe()["calls"]
        calls = {node.name: 0 for node in self.nodes}
        for node in self.nodes:
            for worker in node.worker_ids() & set(per_worker):
                calls[node.name] += per_worker[worker]
        return calls

    def processes(self) -> list[ProcessRef]:
        """Every live process of the cluster: those that carry :attr:`root` (GCS, raylets,
        dashboard, log monitors, client server, workers) and their descendants (a raylet's
        agents, seen without the marker in their environment)."""
        marked = processes_mentioning(str(self.root), "ray-cluster")
        children = children_map()
        found = {ref: None for ref in marked}
        for ref in marked:
            found.update((child, None) for child in ref.descendants(children))
        return sorted(found, key=lambda ref: ref.pid)

    def stop(self, grace_seconds: float = 10.0) -> list[ProcessRef]:
        """SIGTERM, then SIGKILL, every process of the cluster; returns what still runs
        (of the processes found before, and any found after).

        In three waves: the raylets (with their agents and workers), then the other
        processes (dashboard, autoscaler monitor, log monitors, client server), the GCS
        last. Each one leaves within a second while the GCS runs; a raylet or monitor
        whose GCS has gone waits on it for more than 10 s (measured here).
        """
        refs = self.processes()
        raylets = [ref for ref in refs if "raylet/raylet" in command_line(ref.pid)]
        gcs = [ref for ref in refs if "gcs_server" in command_line(ref.pid)]
        others = [ref for ref in refs if ref not in raylets and ref not in gcs]
        left: set[ProcessRef] = set()
        for wave in (raylets, others, gcs):
            left.update(stop_processes(wave, grace_seconds))
        return sorted(left | set(self.processes()), key=lambda ref: ref.pid)


def local_simulation_env(flwr_home: Path, ray_address: str | None) -> dict[str, str]:
    """The environment of a ``flwr run`` that starts its own local SuperLink in ``flwr_home``.

    ``ray_address``: the cluster the simulation joins (``RAY_ADDRESS``); None: Flower
    starts a Ray of its own. ``flwr run`` starts the local SuperLink with a copy of its
    environment (``flwr/cli/local_superlink.py``) and the SuperLink's SuperExec starts the
    simulation with that, so both variables act only when that SuperLink starts. Its
    ports are chosen free (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` and
    ``FLWR_LOCAL_CONTROL_API_PORT``, read by ``flwr/cli/constant.py``) instead of the
    machine-wide 39091 and 39093; apps use the installed packages
    (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION``).
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    })
    if ray_address is not None:
        env["RAY_ADDRESS"] = ray_address
    return env
