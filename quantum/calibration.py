"""Device profiles from qiskit-ibm-runtime's fake backends, extracted once and cached.

The fake backends ship calibration snapshots of real IBM devices. :func:`device_profile`
returns the :class:`quantum.devices.DeviceProfile` of one backend for a circuit width:
from the JSON cache (:func:`cache_dir`) when it is there, else extracted with qiskit
(imported here only, and only then) and written to the cache. So qiskit is loaded at
most once per machine and backend: the ServerApp extracts every profile the run needs
before training, and a UAV's ClientApp then reads a few hundred bytes of JSON.

``python -m quantum.calibration fake_manila`` prints a profile.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from quantum.devices import TWO_QUBIT_NATIVES, DeviceProfile, profile_from_json
from quantum.names import device_problem

CACHE_ENV = "SAGIN_QFL_DEVICE_CACHE"
"""Environment variable naming the profile cache folder (default ``~/.cache/sagin-qfl/devices``)."""

MAX_PATHS = 200_000
"""Most candidate chains examined when placing a circuit on a large device."""


def cache_dir() -> Path:
    """Where extracted profiles are kept, one JSON file per backend and width."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "sagin-qfl" / "devices"


def class_name(device: str) -> str:
    """``fake_manila`` -> ``FakeManilaV2`` (or ``FakeSherbrooke``, whichever exists)."""
    return "Fake" + "".join(part.capitalize() for part in device.split("_")[1:])


def load_backend(device: str) -> Any:
    """The qiskit-ibm-runtime fake backend named ``device`` (imports qiskit)."""
    problem = device_problem(device)
    if problem:
        raise ValueError(f"device {device!r} {problem}")
    from qiskit_ibm_runtime import fake_provider

    base = class_name(device)
    backend_class = getattr(fake_provider, base + "V2", None) or getattr(fake_provider, base)
    return backend_class()


def _edge_errors(target: Any) -> dict[tuple[int, int], tuple[str, float, float]]:
    """Directed native two-qubit gates of a target: ``(a, b) -> (gate, error, duration)``."""
    edges: dict[tuple[int, int], tuple[str, float, float]] = {}
    for gate in TWO_QUBIT_NATIVES:
        if gate not in target.operation_names:
            continue
        for qubits, props in target[gate].items():
            if props is not None and qubits not in edges:
                edges[qubits] = (gate, float(props.error or 0.0), float(props.duration or 0.0))
    return edges


def _chains(neighbours: dict[int, set[int]], n: int) -> Iterator[tuple[int, ...]]:
    """Simple paths of ``n`` qubits (each once, not reversed), at most :data:`MAX_PATHS`."""
    count = 0
    stack: list[tuple[int, ...]] = [(q,) for q in sorted(neighbours)]
    while stack and count < MAX_PATHS:
        path = stack.pop()
        if len(path) == n:
            if n == 1 or path[0] < path[-1]:
                count += 1
                yield path
            continue
        stack.extend(path + (q,) for q in sorted(neighbours[path[-1]]) if q not in path)


def choose_layout(target: Any, n: int) -> tuple[tuple[int, ...], bool]:
    """The physical qubits for ``n`` wires: the ring (else chain) of lowest error.

    A chain's cost is ``-sum log(1 - e)`` over its couplers (each direction's error, the
    lower one), plus its qubits' read-out infidelities; a ring (the last qubit coupled to
    the first) is preferred to any chain, as it needs no SWAPs for the ansatz's ring.
    """
    edges = _edge_errors(target)
    neighbours: dict[int, set[int]] = {q: set() for q in range(target.num_qubits)}
    error: dict[frozenset[int], float] = {}
    for (a, b), (_gate, e, _d) in edges.items():
        neighbours[a].add(b)
        neighbours[b].add(a)
        key = frozenset((a, b))
        error[key] = min(e, error.get(key, e))

    def readout(q: int) -> float:
        props = target["measure"].get((q,)) if "measure" in target.operation_names else None
        return float(props.error or 0.0) if props is not None else 0.0

    best: tuple[int, float, tuple[int, ...], bool] | None = None
    for path in _chains(neighbours, n):
        ring = n > 2 and path[0] in neighbours[path[-1]]
        cost = sum(-math.log1p(-min(error[frozenset(p)], 0.999))
                   for p in zip(path, path[1:], strict=False))
        cost += sum(-math.log1p(-min(readout(q), 0.999)) for q in path)
        candidate = (0 if ring else 1, cost, path, ring)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    if best is None:
        raise ValueError(f"no chain of {n} coupled qubits on a {target.num_qubits}-qubit device")
    return best[2], best[3]


def extract_profile(device: str, n_qubits: int) -> DeviceProfile:
    """Read a fake backend's calibration for an ``n_qubits``-wide circuit (imports qiskit)."""
    target = load_backend(device).target
    if n_qubits > target.num_qubits:
        raise ValueError(f"device {device!r} has {target.num_qubits} qubits; the circuit "
                         f"needs {n_qubits}")
    qubits, ring = choose_layout(target, n_qubits)
    wire = {q: i for i, q in enumerate(qubits)}
    readout = []
    for q in qubits:
        props = target["measure"][(q,)]
        p10 = getattr(props, "prob_meas1_prep0", None)
        p01 = getattr(props, "prob_meas0_prep1", None)
        if p10 is None or p01 is None:
            p10 = p01 = props.error
        readout.append((float(p10), float(p01)))
    single = {}
    for gate in ("sx", "x", "rz"):
        if gate in target.operation_names:
            props = [target[gate].get((q,)) for q in qubits]
            single[gate] = tuple((float(p.error or 0.0) if p else 0.0,
                                  float(p.duration or 0.0) if p else 0.0) for p in props)
    couplers = {f"{wire[a]}-{wire[b]}": edge for (a, b), edge in _edge_errors(target).items()
                if a in wire and b in wire}
    properties = [target.qubit_properties[q] for q in qubits]
    return DeviceProfile(
        name=device, qubits=tuple(qubits), ring=ring,
        t1=tuple(float(p.t1) if p.t1 else math.inf for p in properties),
        t2=tuple(float(p.t2) if p.t2 else math.inf for p in properties),
        readout=tuple(readout), single=single, couplers=couplers,
    )


def device_profile(device: str, n_qubits: int) -> DeviceProfile:
    """The cached profile of ``device`` for ``n_qubits`` wires, extracted if missing."""
    path = cache_dir() / f"{device}-q{n_qubits}.json"
    try:
        cached = profile_from_json(path.read_text())
        # A file damaged, replaced or for another device is extracted again, never used.
        if cached.name == device and cached.n_qubits == n_qubits:
            return cached
    except (OSError, ValueError, KeyError, TypeError):
        pass
    profile = extract_profile(device, n_qubits)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(profile.to_json())
    partial.replace(path)  # atomic: a ClientApp reading it never sees half a file
    return profile


if __name__ == "__main__":  # pragma: no cover - a command
    width = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    print(device_profile(sys.argv[1] if len(sys.argv) > 1 else "fake_manila", width).to_json())
