"""A batched torch statevector executor for circuits written as gates.

The circuit arrives as gate records (:mod:`quantum.gates`): written as data, or recorded
once from PennyLane operations (:mod:`quantum.recording`); no copy of it lives here. It
runs by one of three methods (:data:`METHODS`), chosen by width:

- ``fused`` (data gates first, up to :data:`MAX_FUSED_QUBITS`): the trainable part
  becomes one unitary per forward pass, with a hand-written backward pass
  (:mod:`quantum.fusion`);
- ``stages`` (wider circuits of one-qubit and controlled two-qubit gates, data gates
  first): a product state, then every stage of single-qubit gates fused per wire and
  into Kronecker groups, and the controlled gates, applied to the batch of states with
  a hand-written adjoint backward pass (:mod:`quantum.stages`);
- ``gates`` (anything else, e.g. re-uploading): gates applied one by one to the batch
  of states through precomputed index tensors, differentiated by autograd.

The width at which ``stages`` takes over from ``fused`` was chosen by measurement
(``python -m benchmarks.quantum_methods``): the fused unitary costs ``2**n x 2**n``
matrix products per moment, which outgrow the staged path's passes over the batch of
states between 6 and 7 qubits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import prod

import numpy as np
import torch

from quantum.circuit import check_readout, readout_size
from quantum.fusion import FusedCircuit, FusedTensors, TrainableTensors, build_fused_plan
from quantum.gates import (
    COMPLEX_DTYPES,
    GateRecord,
    check_features,
    circuit_gates,
    wire_embedding,
)
from quantum.stages import (
    GROUP_SIZE,
    StageTensors,
    build_stage_plan,
    choose_groups,
    run_stages,
)

MAX_FUSED_QUBITS = 6
"""Largest width run by default as one fused unitary (the module docstring says why)."""

METHODS: tuple[str, ...] = ("fused", "stages", "gates")
"""How the executor runs a circuit: ``fused`` (the trainable part as one unitary,
:mod:`quantum.fusion`), ``stages`` (fused per-wire stages and controlled gates applied
to the states, :mod:`quantum.stages`), ``gates`` (gate by gate under autograd)."""


def _choose_method(
    method: str | None, fuse: bool | None, n_qubits: int, fusable: bool, stageable: bool
) -> str:
    """The executor's method: the one asked for (``fuse=True``/``False`` asks for
    ``fused``/``gates``), else by width: ``fused`` up to :data:`MAX_FUSED_QUBITS`,
    ``stages`` beyond, ``gates`` for what neither can run."""
    if method is None and fuse is not None:
        method = "fused" if fuse else "gates"
    if method is None:
        if fusable and n_qubits <= MAX_FUSED_QUBITS:
            return "fused"
        return "stages" if stageable else "gates"
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; allowed: {', '.join(METHODS)}")
    if method == "fused" and not fusable:
        raise ValueError(
            "method='fused' (fuse=True) needs the data gates first, on distinct wires "
            "(no re-uploading)"
        )
    if method == "stages" and not stageable:
        raise ValueError(
            "method='stages' needs the data gates first on distinct wires, then one-qubit "
            "gates and controlled two-qubit gates only"
        )
    return method


@dataclass(frozen=True)
class _GateTensors:
    """Per-gate tensors (index arrays, spectra, fixed matrices) and the read-out map."""

    gates: list[dict[str, torch.Tensor]]
    readout: torch.Tensor


class TorchStatevectorExecutor:
    """Run a circuit on a batch of inputs with torch statevectors.

    Parameters
    ----------
    circuit : Callable or Sequence[GateRecord]
        The circuit's gate records, e.g. :func:`quantum.circuit.ansatz_gates`, or a
        PennyLane circuit function called as ``circuit(features, *weights, wires=...)``,
        e.g. :func:`quantum.ansatz.ansatz`, recorded once (this imports PennyLane). Gate
        angles must be single input entries.
    n_qubits : int
        Number of wires; ``features`` has ``n_qubits`` columns.
    weight_shapes : Mapping[str, tuple[int, ...]]
        Shapes of the weight tensors, in the order the circuit takes them.
    readout : str
        ``"expval"`` (Pauli-Z per wire) or ``"probs"`` (wire 0 most significant).
    fuse : bool or None
        The older switch: ``True`` asks for ``method="fused"``, ``False`` for
        ``method="gates"``; ignored when ``method`` is given.
    method : str or None
        One of :data:`METHODS`; ``None`` chooses by width (the module docstring).
    group_size : int
        Wires per Kronecker group of a stage (``stages`` only; see
        :func:`quantum.stages.choose_groups`).

    Attributes
    ----------
    method : str
        The method the executor runs.
    fused : bool
        Whether that method is ``"fused"``.

    Raises
    ------
    ValueError
        For an unknown method, or one the circuit does not allow.

    Notes
    -----
    Input ``float32`` runs in ``complex64`` and ``float64`` in ``complex128`` (``stages``:
    their real and imaginary parts in ``float32``/``float64``); weights are cast to the
    input's dtype and the output has it. The ``fused`` and ``stages`` backward passes
    are written out and give first derivatives only; ``gates`` runs under autograd and
    supports higher derivatives.
    """

    def __init__(
        self,
        circuit: Callable[..., None] | Sequence[GateRecord],
        n_qubits: int,
        weight_shapes: Mapping[str, tuple[int, ...]],
        readout: str = "expval",
        fuse: bool | None = None,
        method: str | None = None,
        group_size: int = GROUP_SIZE,
    ) -> None:
        check_readout(readout)
        choose_groups(n_qubits, group_size)  # refuses a bad size now rather than later
        self.group_size = group_size
        self.n_qubits = n_qubits
        self.readout = readout
        self.out_features = readout_size(readout, n_qubits)
        self.weight_shapes = dict(weight_shapes)
        self.gates = circuit_gates(circuit, n_qubits, weight_shapes)

        n_leading = 0
        while n_leading < len(self.gates) and self.gates[n_leading].source == "feature":
            n_leading += 1
        encoding, body = self.gates[:n_leading], self.gates[n_leading:]
        encoding_wires = [wire for gate in encoding for wire in gate.wires]
        fusable = len(set(encoding_wires)) == len(encoding_wires) and all(
            gate.source != "feature" for gate in body
        )
        stage_plan = build_stage_plan(encoding, body, n_qubits) if fusable else None
        self.method = _choose_method(method, fuse, n_qubits, fusable, stage_plan is not None)
        self.fused = self.method == "fused"
        n_weights = sum(prod(shape) for shape in self.weight_shapes.values())
        self._plan = (
            build_fused_plan(encoding, body, n_qubits, n_qubits, n_weights)
            if self.fused else None
        )
        self._stage_plan = stage_plan if self.method == "stages" else None
        self._tensors: dict[
            tuple[torch.device, torch.dtype], FusedTensors | StageTensors | _GateTensors
        ] = {}

    def _device_tensors(
        self, device: torch.device, dtype: torch.dtype
    ) -> FusedTensors | StageTensors | _GateTensors:
        key = (device, dtype)
        if key not in self._tensors:
            if self._stage_plan is not None:
                signs = None if self.readout == "probs" else self._readout_signs()
                self._tensors[key] = StageTensors.from_plan(
                    self._stage_plan, signs, device, dtype, self.group_size
                )
            else:
                build = self._build_fused_tensors if self.fused else self._build_gate_tensors
                self._tensors[key] = build(device, dtype)
        return self._tensors[key]

    def _readout_signs(self) -> np.ndarray:
        """Map from the probabilities ``|s_r|^2`` to the read-out."""
        n_qubits = self.n_qubits
        if self.readout == "probs":
            return np.eye(2**n_qubits)
        bits = (np.arange(2**n_qubits)[:, None] >> (n_qubits - 1 - np.arange(n_qubits))) & 1
        return 1.0 - 2.0 * bits

    def _readout_matrix(self) -> np.ndarray:
        """Map from ``(Re s_0^2, Im s_0^2, Re s_1^2, ...)`` to the read-out."""
        return np.repeat(self._readout_signs(), 2, axis=0)

    def _build_fused_tensors(self, device: torch.device, dtype: torch.dtype) -> FusedTensors:
        real_dtype = torch.float64 if dtype == torch.complex128 else torch.float32

        def as_tensor(array: np.ndarray, tensor_dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=tensor_dtype, device=device)

        plan, dim = self._plan, 2**self.n_qubits
        if plan is None:
            raise RuntimeError("this executor is not fused; it has no fused plan")
        trainable = None
        # FusedPlan sets both or neither.
        if plan.transfers is not None and plan.exponent_map is not None:
            # Transposed factors (D_m T_m)^T = T_m^T D_m, in reverse circuit order, so that
            # the running product F_k @ ... @ F_0 is U^T.
            n_weights = plan.exponent_map.shape[0]
            reordered = plan.exponent_map.reshape(n_weights, -1, dim)[:, ::-1]
            exponent_map = as_tensor(reordered.reshape(n_weights, -1), real_dtype)
            transfers = as_tensor(plan.transfers.transpose(0, 2, 1)[::-1], dtype)
            trainable = TrainableTensors(
                exponent_map=exponent_map,
                exponent_map_t=exponent_map.T.contiguous(),
                transfers=transfers,
                unit_phases=torch.ones(len(transfers), 1, dim, dtype=real_dtype, device=device),
            )
        return FusedTensors(
            feature_map=as_tensor(plan.feature_map, real_dtype),
            feature_map_t=as_tensor(plan.feature_map.T, real_dtype),
            initial_angle=as_tensor(np.angle(plan.initial), real_dtype),
            initial_abs=as_tensor(np.abs(plan.initial), real_dtype),
            trainable=trainable,
            left=as_tensor(plan.left.T, dtype),
            left_h=as_tensor(plan.left.conj(), dtype),
            identity=as_tensor(np.eye(dim)[None], dtype),
            readout=as_tensor(self._readout_matrix(), real_dtype),
            readout_grad=as_tensor(2 * self._readout_matrix().T, real_dtype),
        )

    def _build_gate_tensors(self, device: torch.device, dtype: torch.dtype) -> _GateTensors:
        real_dtype = torch.float64 if dtype == torch.complex128 else torch.float32

        def as_tensor(array: np.ndarray, tensor_dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=tensor_dtype, device=device)

        gate_tensors = []
        for gate in self.gates:
            sub, partner = wire_embedding(gate.wires, self.n_qubits)
            tensors = {"sub": as_tensor(sub, torch.long), "partner": as_tensor(partner, torch.long)}
            if gate.source == "constant":
                tensors["matrix"] = as_tensor(gate.fixed_matrix(), dtype)
            else:
                eigvecs, eigvals = gate.spectrum()
                tensors["eigvals"] = as_tensor(eigvals, real_dtype)
                tensors["eigvecs"] = as_tensor(eigvecs, dtype)
                tensors["eigvecs_h"] = as_tensor(eigvecs.conj().T, dtype)
            gate_tensors.append(tensors)
        return _GateTensors(gate_tensors, as_tensor(self._readout_matrix(), real_dtype))

    def __call__(self, features: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        """Run the circuit on a batch.

        Parameters
        ----------
        features : torch.Tensor
            Shape ``(batch, n_qubits)``, ``float32`` or ``float64``.
        *weights : torch.Tensor
            The weight tensors, shapes as in ``weight_shapes``.

        Returns
        -------
        torch.Tensor
            Shape ``(batch, out_features)``, same dtype as ``features``.
        """
        complex_dtype = check_features(features, self.n_qubits)
        tensors = self._device_tensors(features.device, complex_dtype)
        if isinstance(tensors, FusedTensors):  # built when self.fused
            return FusedCircuit.apply(features, tensors, *weights)
        if isinstance(tensors, StageTensors):
            return run_stages(features, weights, tensors)
        flat_weights = torch.cat([w.reshape(-1) for w in weights]).to(features.dtype)
        state = self._run_gates(features, flat_weights, tensors.gates)
        squares = torch.view_as_real(state).square()
        return squares.view(len(state), -1) @ tensors.readout

    def _run_gates(
        self,
        features: torch.Tensor,
        flat_weights: torch.Tensor,
        gate_tensors: list[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """Final states, applying the gates one at a time to the batch of states."""
        dim = 2**self.n_qubits
        state = torch.zeros(
            features.shape[0], dim, dtype=COMPLEX_DTYPES[features.dtype], device=features.device
        )
        state[:, 0] = 1.0
        for gate, tensors in zip(self.gates, gate_tensors, strict=True):
            if gate.source == "constant":
                matrix = tensors["matrix"]
            else:
                angle = (
                    features[:, gate.index]
                    if gate.source == "feature"
                    else flat_weights[gate.index]
                )
                phases = torch.exp(1j * angle[..., None] * tensors["eigvals"])
                matrix = (tensors["eigvecs"] * phases[..., None, :]) @ tensors["eigvecs_h"]
            rows = matrix[..., tensors["sub"], :]
            state = (state[:, tensors["partner"]] * rows).sum(-1)
        return state
