"""Device-realistic circuits: a device's calibration as plain numbers, and the ansatz on it.

A :class:`DeviceProfile` holds what one IBM device's calibration snapshot says about the
physical qubits the circuit is placed on (T1, T2, read-out errors, native gates' errors
and durations). It is extracted once, with qiskit, by :mod:`quantum.calibration`, and
kept as a small JSON file; this module needs neither qiskit nor PennyLane.

:func:`compile_ansatz` writes the ansatz in the device's native gates, wire ``i`` being
physical qubit ``profile.qubits[i]`` (a ring of coupled qubits when the device has one,
else the best chain), and gives every native gate the noise qiskit-aer's
``NoiseModel.from_backend`` gives it: a depolarizing channel on the gate's qubits, then
thermal relaxation (T1 amplitude damping and T2 dephasing over the gate's duration) on
each, the depolarizing parameter chosen so that the two together have the calibrated
average gate error. The translation, as qiskit's basis translation at optimization level
0 does it (no merging of single-qubit runs):

- ``RZ(t)``: ``rz(t)`` (virtual: no duration, no error on IBM devices);
- ``RY(t)``: ``sx, rz(t + pi), sx, rz(3 pi)``; ``RX(t)``: ``rz(pi/2)``, then ``RY``'s
  sequence with ``rz(5 pi / 2)`` last;
- ``CRX(t)`` on ``(c, w)``: ``rz(pi/2)_w, RY(t/2)_w, CX, RY(-t/2)_w, CX, rz(-pi/2)_w``;
- ``CX(c, w)``: the native ``cx`` in that direction; else the reverse ``cx`` between
  Hadamards (``H = rz(pi/2) sx rz(pi/2)``) on both wires; ``cz`` between Hadamards on
  the target; ``ecr(c, w)`` after ``x, rz(-pi/2)`` on the control and ``sx`` on the target;
- on a chain, the ring's closing ``CRX(n-1 -> 0)`` is routed: SWAPs (three CX each) carry
  wire ``n-1``'s state next to wire 0 and back afterwards, with all their noise.

Idle qubits get no noise (as ``NoiseModel.from_backend`` on an unscheduled circuit) and
cross-talk is not modelled. Read-out errors flip each measured bit with the calibrated,
asymmetric ``P(1|0)`` and ``P(0|1)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from quantum.circuit import ansatz_gates
from quantum.gates import GENERATORS, GateRecord, spectral_gate

TWO_QUBIT_NATIVES: tuple[str, ...] = ("cx", "ecr", "cz")
"""Native two-qubit gates a profile may use, in order of preference."""

_SX = 0.5 * np.array([[1 + 1j, 1 - 1j], [1 - 1j, 1 + 1j]])
_X = np.array([[0, 1], [1, 0]], dtype=np.complex128)
_CX = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=np.complex128)
_CZ = np.diag([1, 1, 1, -1]).astype(np.complex128)
_ECR = np.array([[0, 0, 1, 1j], [0, 0, 1j, 1], [1, -1j, 0, 0], [-1j, 1, 0, 0]]) / math.sqrt(2)

NATIVE_MATRICES: dict[str, np.ndarray] = {"sx": _SX, "x": _X, "cx": _CX, "cz": _CZ, "ecr": _ECR}
"""Matrices of the fixed native gates, first wire most significant (qiskit's up to phase)."""


@dataclass(frozen=True)
class DeviceProfile:
    """One device's calibration on the physical qubits the circuit uses.

    Attributes
    ----------
    name : str
        The backend's name, e.g. ``"fake_manila"``.
    qubits : tuple[int, ...]
        Physical qubit of each wire; consecutive wires are coupled.
    ring : bool
        Whether the last and first wires are coupled too.
    t1, t2 : tuple[float, ...]
        Per wire, in seconds.
    readout : tuple[tuple[float, float], ...]
        Per wire, ``(P(1|0), P(0|1))``: the chance a prepared 0 reads 1 and vice versa.
    single : dict[str, tuple[tuple[float, float], ...]]
        Native one-qubit gate (``sx``, ``x``, ``rz``) -> per wire ``(error, duration)``.
    couplers : dict[str, tuple[str, float, float]]
        ``"a-b"`` (wires, in the native gate's direction) -> ``(gate, error, duration)``.
    """

    name: str
    qubits: tuple[int, ...]
    ring: bool
    t1: tuple[float, ...]
    t2: tuple[float, ...]
    readout: tuple[tuple[float, float], ...]
    single: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    couplers: dict[str, tuple[str, float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _profile_problem(self)
        if problem:
            raise ValueError(f"device profile {self.name!r} is not physical: {problem}")

    @property
    def n_qubits(self) -> int:
        """Number of wires."""
        return len(self.qubits)

    def to_json(self) -> str:
        """The profile as a JSON text with the SHA-256 of its fields (what
        :func:`profile_from_json` reads and checks)."""
        fields = json.dumps(asdict(self), sort_keys=True)
        digest = hashlib.sha256(fields.encode()).hexdigest()
        return json.dumps({"profile": json.loads(fields), "sha256": digest}, sort_keys=True)


def _profile_problem(profile: DeviceProfile) -> str:
    """What makes a profile impossible (a damaged cache file, say), or ``""``."""
    n = len(profile.qubits)
    if n == 0 or len(set(profile.qubits)) != n:
        return f"qubits {profile.qubits} are not distinct physical qubits"
    if not (len(profile.t1) == len(profile.t2) == len(profile.readout) == n):
        return "t1, t2 and readout need one entry per wire"
    if not all(t > 0 for t in (*profile.t1, *profile.t2)):  # inf: no relaxation
        return "T1 and T2 must be positive seconds"
    if not all(0.0 <= p <= 1.0 for pair in profile.readout for p in pair):
        return "read-out error probabilities must be in [0, 1]"
    errors = [pair for values in profile.single.values() for pair in values]
    if any(len(values) != n for values in profile.single.values()):
        return "one-qubit gates need one (error, duration) per wire"
    errors += [(error, duration) for _gate, error, duration in profile.couplers.values()]
    if not all(0.0 <= e <= 1.0 and math.isfinite(d) and d >= 0 for e, d in errors):
        return "gate errors must be in [0, 1] and durations non-negative seconds"
    if any(gate not in TWO_QUBIT_NATIVES for gate, _e, _d in profile.couplers.values()):
        return f"couplers use a gate outside {TWO_QUBIT_NATIVES}"
    return ""


def profile_from_json(text: str) -> DeviceProfile:
    """Read a :class:`DeviceProfile` written by :meth:`DeviceProfile.to_json`.

    Raises
    ------
    ValueError
        The text is not such a profile, its SHA-256 does not match its fields, or the
        values are not physical.
    """
    wrapped: dict[str, Any] = json.loads(text)
    data: dict[str, Any] = wrapped["profile"]
    fields = json.dumps(data, sort_keys=True)
    if hashlib.sha256(fields.encode()).hexdigest() != wrapped.get("sha256"):
        raise ValueError("device profile does not match its SHA-256")
    return DeviceProfile(
        name=str(data["name"]),
        qubits=tuple(int(q) for q in data["qubits"]),
        ring=bool(data["ring"]),
        t1=tuple(float(v) for v in data["t1"]),
        t2=tuple(float(v) for v in data["t2"]),
        readout=tuple((float(a), float(b)) for a, b in data["readout"]),
        single={k: tuple((float(e), float(d)) for e, d in v) for k, v in data["single"].items()},
        couplers={k: (str(g), float(e), float(d)) for k, (g, e, d) in data["couplers"].items()},
    )


@dataclass(frozen=True)
class Depolarizing:
    """``rho -> (1 - p) rho + p I/2^k (x) Tr_wires rho`` on ``k`` wires (qiskit's form)."""

    wires: tuple[int, ...]
    p: float


@dataclass(frozen=True)
class Relaxation:
    """Thermal relaxation at zero temperature on one wire: ``|1>`` decays to ``|0>`` with
    probability ``damping``, coherences are multiplied by ``coherence``."""

    wire: int
    damping: float
    coherence: float


Channel = Depolarizing | Relaxation


@dataclass
class DeviceCircuit:
    """The ansatz in native gates: ``gates[k]`` is followed by the channels ``noise[k]``;
    the read-out then flips bits with ``readout`` (per wire ``(P(1|0), P(0|1))``)."""

    gates: list[GateRecord]
    noise: list[tuple[Channel, ...]]
    readout: tuple[tuple[float, float], ...]
    gate_errors: list[float]


def _relaxation(profile: DeviceProfile, wire: int, duration: float) -> Relaxation:
    t1 = profile.t1[wire]
    t2 = min(profile.t2[wire], 2 * t1)  # as qiskit-aer truncates T2 > 2 T1
    return Relaxation(wire, 1 - math.exp(-duration / t1), math.exp(-duration / t2))


def gate_noise(profile: DeviceProfile, wires: Sequence[int], error: float,
               duration: float) -> tuple[Channel, ...]:
    """The channels after one native gate, as qiskit-aer's ``NoiseModel.from_backend``.

    Relaxation on each wire over ``duration``; a depolarizing channel first whose
    parameter makes the composition's average gate infidelity ``error`` (none if the
    relaxation alone reaches it; capped at aer's bounds).
    """
    relax = tuple(_relaxation(profile, w, duration) for w in wires) if duration > 0 else ()
    dim = 2 ** len(wires)
    process = math.prod((2 - r.damping + 2 * r.coherence) / 4 for r in relax)
    relax_fidelity = (dim * process + 1) / (dim + 1)
    channels: tuple[Channel, ...] = ()
    if error and error > 1 - relax_fidelity:
        error = min(error, dim / (dim + 1))
        p = dim * (error - (1 - relax_fidelity)) / (dim * relax_fidelity - 1)
        p = min(p, 4 ** len(wires) / (4 ** len(wires) - 1))
        channels = (Depolarizing(tuple(wires), p),)
    return channels + relax


class _Builder:
    """Collects native gates with their noise, wire by wire."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.circuit = DeviceCircuit([], [], profile.readout, [])

    def native(self, name: str, wires: tuple[int, ...], record: GateRecord | None = None,
               angle: float = 0.0) -> None:
        if record is None:
            matrix = (NATIVE_MATRICES[name] if name != "rz"
                      else np.diag([np.exp(-0.5j * angle), np.exp(0.5j * angle)]))
            record = GateRecord(name, wires, "constant", -1, matrix=matrix)
        if len(wires) == 1:
            per_wire = self.profile.single.get(name)
            error, duration = per_wire[wires[0]] if per_wire else (0.0, 0.0)
        else:
            _gate, error, duration = self.profile.couplers[f"{wires[0]}-{wires[1]}"]
        self.circuit.gates.append(record)
        self.circuit.noise.append(gate_noise(self.profile, wires, error, duration))
        self.circuit.gate_errors.append(error)

    def rz(self, wire: int, source: str = "constant", index: int = -1, scale: float = 1.0,
           offset: float = 0.0) -> None:
        if offset:
            self.native("rz", (wire,), angle=offset)
        if source != "constant":
            self.native("rz", (wire,), spectral_gate(scale * GENERATORS["RZ"], "rz", (wire,),
                                                     source, index))

    def ry(self, wire: int, source: str, index: int, scale: float = 1.0) -> None:
        self.native("sx", (wire,))
        self.rz(wire, source, index, scale, math.pi)
        self.native("sx", (wire,))
        self.rz(wire, offset=3 * math.pi)

    def hadamard(self, wire: int) -> None:
        self.rz(wire, offset=math.pi / 2)
        self.native("sx", (wire,))
        self.rz(wire, offset=math.pi / 2)

    def cx(self, control: int, target: int) -> None:
        couplers = self.profile.couplers
        forward, backward = couplers.get(f"{control}-{target}"), couplers.get(
            f"{target}-{control}")
        gate = (forward or backward or ("",))[0]
        if gate == "cz":
            wires = (control, target) if forward else (target, control)
            self.hadamard(target)
            self.native("cz", wires)
            self.hadamard(target)
        elif forward and gate == "cx":
            self.native("cx", (control, target))
        elif forward and gate == "ecr":
            self.native("x", (control,))
            self.rz(control, offset=-math.pi / 2)
            self.native("sx", (target,))
            self.native("ecr", (control, target))
        elif backward:
            for wire in (control, target):
                self.hadamard(wire)
            self.cx(target, control)
            for wire in (control, target):
                self.hadamard(wire)
        else:
            raise ValueError(f"{self.profile.name}: wires {control} and {target} are not "
                             "coupled")

    def swap(self, a: int, b: int) -> None:
        self.cx(a, b)
        self.cx(b, a)
        self.cx(a, b)

    def crx(self, control: int, target: int, source: str, index: int) -> None:
        self.rz(target, offset=math.pi / 2)
        self.ry(target, source, index, 0.5)
        self.cx(control, target)
        self.ry(target, source, index, -0.5)
        self.cx(control, target)
        self.rz(target, offset=-math.pi / 2)


def _routed_crx(builder: _Builder, gate: GateRecord, n: int, ring: bool) -> None:
    """A CRX on a chain: direct between neighbours; the ring's closing gate through SWAPs."""
    control, target = gate.wires
    if abs(control - target) == 1 or ring or n == 2:
        builder.crx(control, target, gate.source, gate.index)
        return
    # Wire n-1 to wire 0 on a chain: carry wire n-1's state down to position 1.
    path = list(range(control, target + 1, -1))  # n-1, n-2, ..., 2
    for position in path:
        builder.swap(position, position - 1)
    builder.crx(target + 1, target, gate.source, gate.index)
    for position in reversed(path):
        builder.swap(position, position - 1)


def active_gates(n_qubits: int, n_layers: int, active_layers: int | None) -> list[GateRecord]:
    """The ansatz's gates for ``n_layers`` of weights, only the first ``active_layers``
    layers (all if ``None``) present; weight indices stay those of the full shapes."""
    gates = ansatz_gates(n_qubits, n_layers)
    if active_layers is None or active_layers >= n_layers:
        return gates
    n_rotations = 3 * n_qubits * n_layers

    def layer(gate: GateRecord) -> int:
        if gate.index < n_rotations:
            return gate.index // (3 * n_qubits)
        return (gate.index - n_rotations) // n_qubits

    return [g for g in gates if g.source != "weight" or layer(g) < active_layers]


def compile_ansatz(profile: DeviceProfile, n_layers: int,
                   active_layers: int | None = None) -> DeviceCircuit:
    """The ansatz on the device, in native gates with their noise (see the module text).

    Parameters
    ----------
    profile : DeviceProfile
        The device, with one physical qubit per wire.
    n_layers : int
        Layers of the weight tensors.
    active_layers : int, optional
        Layers the circuit runs (a shallower UAV's circuit); default all.
    """
    n = profile.n_qubits
    builder = _Builder(profile)
    for gate in active_gates(n, n_layers, active_layers):
        (wire, *_rest) = gate.wires
        if gate.name == "RZ":
            builder.rz(wire, gate.source, gate.index)
        elif gate.name == "RY":
            builder.ry(wire, gate.source, gate.index)
        elif gate.name == "RX":
            builder.rz(wire, offset=math.pi / 2)
            builder.native("sx", (wire,))
            builder.rz(wire, gate.source, gate.index, 1.0, math.pi)
            builder.native("sx", (wire,))
            builder.rz(wire, offset=5 * math.pi / 2)
        else:
            _routed_crx(builder, gate, n, profile.ring)
    return builder.circuit


def circuit_fidelity(profile: DeviceProfile, n_layers: int,
                     active_layers: int | None = None) -> float:
    """Expected fidelity of the compiled circuit: the product over its native gates of
    ``1 - gate error``, times each wire's read-out fidelity ``1 - (P(1|0) + P(0|1)) / 2``.
    """
    circuit = compile_ansatz(profile, n_layers, active_layers)
    gates = math.prod(1.0 - error for error in circuit.gate_errors)
    return gates * math.prod(1.0 - (a + b) / 2 for a, b in profile.readout)
