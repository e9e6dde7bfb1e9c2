"""The quantum layer: one torch module, the same ansatz on the torch executor or a device.

The ``"torch"`` backend runs the ansatz's gate list (:func:`quantum.circuit.ansatz_gates`)
and imports no PennyLane; the device backends import it when a layer is built on one.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from quantum.circuit import ansatz_gates, check_readout, readout_size, weight_shapes
from quantum.devices import DeviceProfile, active_gates, compile_ansatz, profile_from_json
from quantum.executor import TorchStatevectorExecutor
from quantum.mixed import TorchDensityMatrixExecutor
from quantum.names import (
    DEFAULT_ENTANGLER,
    MAX_QUBITS,
    PENNYLANE_DEVICES,
    TORCH_BACKEND,
    check_entangler,
    check_gate_noise,
    noise_backend_problem,
    training_problem,
)
from quantum.noise import (
    check_shots,
    depolarizing_noise_model,
    expvals_from_probabilities,
    sample_probabilities,
)

if TYPE_CHECKING:  # PennyLane is imported only by the device backends, when they are built.
    import pennylane as qml

ANGLE_PERIODS: dict[str, float] = {"rotation_weights": 2 * math.pi, "crx_weights": 4 * math.pi}
"""The layer's rotation-angle parameters and the period of each, for averaging as angles.

``RX(t + 2 pi) = -RX(t)`` (likewise RY, RZ) is a global phase, so single-qubit angles act
with period 2 pi. ``CRX(t + 2 pi)`` flips the sign of the control-1 block only, a
relative phase that changes the output, so CRX angles have period 4 pi.
"""


def check_layer_arguments(n_qubits: int, n_layers: int, readout: str) -> None:
    """Raise one clear ``ValueError`` for an unsupported width, depth or read-out.

    Parameters
    ----------
    n_qubits : int
        Must be an int in ``1..MAX_QUBITS``.
    n_layers : int
        Must be an int >= 1.
    readout : str
        Must be ``"expval"`` or ``"probs"``.
    """
    check_readout(readout)
    if not isinstance(n_qubits, int) or not 1 <= n_qubits <= MAX_QUBITS:
        raise ValueError(f"n_qubits={n_qubits!r} is not supported; allowed: 1..{MAX_QUBITS}")
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers={n_layers!r} is not supported; allowed: an int >= 1")


class QuantumLayer(nn.Module):
    """Variational quantum circuit as a torch layer: angle encoding, then trainable layers.

    The circuit is :func:`quantum.ansatz.ansatz`. The ``"torch"`` backend runs it with the
    batched statevector executor; any other backend is a PennyLane device name, run as a
    QNode with the torch interface on the whole batch at once (parameter broadcasting).

    Parameters
    ----------
    n_qubits : int
        Number of wires and of input features, 1 to :data:`MAX_QUBITS`.
    n_layers : int
        Number of trainable layers, at least 1.
    readout : str
        ``"expval"`` (Pauli-Z per wire, ``n_qubits`` outputs in [-1, 1]) or ``"probs"``
        (``2**n_qubits`` basis-state probabilities, wire 0 most significant).
    backend : str
        ``"torch"`` or a PennyLane device name such as ``"default.qubit"``,
        ``"default.mixed"`` or ``"lightning.qubit"``.
    diff_method : str
        QNode differentiation method for device backends. ``"best"`` picks backprop for
        ``default.*`` devices and adjoint for ``lightning.*``; ignored by ``"torch"``.
        ``lightning.qubit`` cannot train ``"probs"`` or ``shots``, which adjoint cannot
        differentiate, and is refused with them (:func:`quantum.names.training_problem`).
    init_seed : int or None
        Seed of the initial angles; ``None`` draws from torch's global generator.
    noise_model : pennylane.NoiseModel or None
        Noise inserted with ``qml.noise.add_noise``; needs ``backend="default.mixed"``
        (see :func:`quantum.noise.depolarizing_noise_model`).
    gate_noise : float
        Depolarizing probability after every gate, on each of its wires (0: none). The
        ``"torch"`` backend then runs :class:`quantum.mixed.TorchDensityMatrixExecutor`;
        ``"default.mixed"`` gets :func:`quantum.noise.depolarizing_noise_model`, the
        reference. Other backends cannot simulate noise.
    shots : int
        0 (default) for exact outputs; otherwise every output is estimated from this
        many measurements of the circuit (:func:`quantum.noise.sample_probabilities`,
        torch's global random generator), on any backend but ``lightning.qubit``. The
        gradient is that of the exact outputs.
    device : DeviceProfile, optional
        Run the circuit as on this device (``"torch"`` backend only, no ``gate_noise``):
        compiled to its native gates with its calibrated noise
        (:func:`quantum.devices.compile_ansatz`), on the density-matrix executor.
    circuit_layers : int, optional
        Layers the circuit runs, the first ones (default all ``n_layers``): a shallower
        UAV's circuit. The weights keep all ``n_layers``; the others get no gradient.
    entangler : str
        ``"crx-ring"`` (default) or ``"none"``: the same circuit without the CRX ring, a
        product state whose ``expval`` outputs each depend on their own wire's input
        only (the entanglement ablation). The layer then has no ``crx_weights``, so
        ``n_layers * n_qubits`` fewer parameters. Every backend runs it.

    Attributes
    ----------
    rotation_weights : torch.nn.Parameter
        Shape ``(n_layers, n_qubits, 3)``: RX, RY, RZ angles, initialised in [-pi, pi).
    crx_weights : torch.nn.Parameter
        Shape ``(n_layers, n_qubits)``: CRX ring angles, initialised in [-pi, pi). Absent
        with ``entangler="none"``.

    Raises
    ------
    ValueError
        For an unsupported read-out, width, depth, backend or noise set-up, or a backend
        that cannot train the read-out.
    """

    # Registered in __init__ under the names weight_shapes gives them (no crx_weights
    # with entangler="none").
    rotation_weights: nn.Parameter
    crx_weights: nn.Parameter

    def __init__(
        self,
        n_qubits: int = 4,
        n_layers: int = 2,
        readout: str = "expval",
        backend: str = TORCH_BACKEND,
        diff_method: str = "best",
        init_seed: int | None = None,
        noise_model: qml.NoiseModel | None = None,
        gate_noise: float = 0.0,
        shots: int = 0,
        device: DeviceProfile | None = None,
        circuit_layers: int | None = None,
        entangler: str = DEFAULT_ENTANGLER,
    ) -> None:
        super().__init__()
        check_layer_arguments(n_qubits, n_layers, readout)
        check_entangler(entangler)
        if entangler != DEFAULT_ENTANGLER and (device is not None or circuit_layers):
            raise ValueError("a device or a shallower circuit runs the crx-ring ansatz only")
        _check_device(device, circuit_layers, n_qubits, n_layers, backend, gate_noise)
        check_shots(shots)
        check_gate_noise(gate_noise)
        problem = noise_backend_problem(gate_noise, backend)
        if problem:
            raise ValueError(f"gate_noise={gate_noise} {problem}")
        problem = training_problem(backend, readout, shots)
        if problem:
            raise ValueError(f"backend={backend!r} {problem}")
        if gate_noise and noise_model is not None:
            raise ValueError("give gate_noise or noise_model, not both")
        if gate_noise and backend == "default.mixed":
            noise_model = depolarizing_noise_model(gate_noise)
        if noise_model is not None and backend != "default.mixed":
            raise ValueError(f"noise_model needs backend='default.mixed', got backend={backend!r}")
        self.n_qubits = n_qubits
        self.n_layers = n_layers
        self.readout = readout
        self.backend = backend
        self.shots = shots
        self.gate_noise = float(gate_noise)
        self.device = None if device is None else device.name
        self.circuit_layers = circuit_layers
        self.entangler = entangler
        # Shots sample basis states: the circuit then reads out probabilities, and the
        # requested read-out is computed from their estimates.
        circuit_readout = "probs" if shots else readout

        generator = None if init_seed is None else torch.Generator().manual_seed(init_seed)
        shapes = weight_shapes(n_qubits, n_layers, entangler)
        self.weight_names = tuple(shapes)
        for name, shape in shapes.items():
            angles = torch.empty(shape).uniform_(-math.pi, math.pi, generator=generator)
            self.register_parameter(name, nn.Parameter(angles))

        self._executor: TorchStatevectorExecutor | TorchDensityMatrixExecutor | None = None
        self._qnode: Any = None  # a qml.QNode; PennyLane ships no type information
        if device is not None:
            self._executor = _device_executor(device.to_json(), n_layers, circuit_readout,
                                              circuit_layers)
        elif backend == TORCH_BACKEND:
            self._executor = _torch_executor(n_qubits, n_layers, circuit_readout,
                                             self.gate_noise, circuit_layers, entangler)
        else:
            self._qnode = _make_qnode(
                backend, n_qubits, circuit_readout, diff_method, noise_model
            )

    @property
    def out_features(self) -> int:
        """Number of outputs: ``n_qubits`` for ``"expval"``, ``2**n_qubits`` for ``"probs"``."""
        return readout_size(self.readout, self.n_qubits)

    @property
    def method(self) -> str:
        """How the circuit runs: the statevector executor's method (``"fused"``,
        ``"stages"`` or ``"gates"``, see :data:`quantum.executor.METHODS`),
        ``"density_matrix"`` with gate noise, or the PennyLane device's name."""
        if isinstance(self._executor, TorchStatevectorExecutor):
            return self._executor.method
        return "density_matrix" if self._executor is not None else self.backend

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Run the circuit on a batch of feature vectors (angles).

        Parameters
        ----------
        features : torch.Tensor
            Shape ``(..., n_qubits)``, ``float32`` or ``float64``.

        Returns
        -------
        torch.Tensor
            Shape ``(..., out_features)``, same dtype as ``features``.
        """
        if features.shape[-1] != self.n_qubits:
            raise ValueError(
                f"features must have {self.n_qubits} columns (one per qubit), "
                f"got shape {tuple(features.shape)}"
            )
        if features.ndim != 2:
            batch_shape = features.shape[:-1]
            outputs = self.forward(features.reshape(-1, self.n_qubits))
            return outputs.reshape(*batch_shape, self.out_features)
        weights = [getattr(self, name) for name in self.weight_names]
        if self._executor is not None:
            outputs = self._executor(features, *weights)
        else:
            result = self._qnode(features, *weights)
            outputs = (
                torch.stack(list(result), dim=-1)
                if self.readout == "expval" and not self.shots
                else result
            ).reshape(features.shape[0], -1).to(features.dtype)
        if not self.shots:
            return outputs
        estimates = sample_probabilities(outputs, self.shots)
        if self.readout == "probs":
            return estimates
        return expvals_from_probabilities(estimates, self.n_qubits)

    def extra_repr(self) -> str:
        return (
            f"n_qubits={self.n_qubits}, n_layers={self.n_layers}, "
            f"readout={self.readout!r}, backend={self.backend!r}"
            + (f", gate_noise={self.gate_noise}" if self.gate_noise else "")
            + (f", entangler={self.entangler!r}" if self.entangler != DEFAULT_ENTANGLER else "")
            + (f", shots={self.shots}" if self.shots else "")
            + (f", device={self.device!r}" if self.device else "")
            + (f", circuit_layers={self.circuit_layers}" if self.circuit_layers else "")
        )


def _check_device(device: DeviceProfile | None, circuit_layers: int | None, n_qubits: int,
                  n_layers: int, backend: str, gate_noise: float) -> None:
    """Raise one clear ``ValueError`` for a device or circuit depth the layer cannot run."""
    if circuit_layers is not None and not (
            isinstance(circuit_layers, int) and 1 <= circuit_layers <= n_layers):
        raise ValueError(f"circuit_layers={circuit_layers!r} is not allowed; use 1..{n_layers}")
    if device is None:
        return
    if backend != TORCH_BACKEND or gate_noise:
        raise ValueError(f"device={device.name!r} needs backend {TORCH_BACKEND!r} and no "
                         f"gate_noise; got backend={backend!r}, gate_noise={gate_noise}")
    if device.n_qubits != n_qubits:
        raise ValueError(f"device profile {device.name!r} places {device.n_qubits} wires; "
                         f"the layer has {n_qubits}")


@functools.lru_cache(maxsize=32)
def _device_executor(profile_json: str, n_layers: int, readout: str,
                     circuit_layers: int | None) -> TorchDensityMatrixExecutor:
    """The ansatz compiled on a device (by its profile's JSON), once per shape."""
    profile = profile_from_json(profile_json)
    compiled = compile_ansatz(profile, n_layers, circuit_layers)
    shapes = weight_shapes(profile.n_qubits, n_layers)
    return TorchDensityMatrixExecutor(compiled.gates, profile.n_qubits, shapes, readout,
                                      device=compiled)


@functools.lru_cache(maxsize=32)
def _torch_executor(
    n_qubits: int, n_layers: int, readout: str, gate_noise: float = 0.0,
    circuit_layers: int | None = None,
    entangler: str = DEFAULT_ENTANGLER,
) -> TorchStatevectorExecutor | TorchDensityMatrixExecutor:
    """The ansatz's torch executor, recorded once per circuit shape and shared by layers
    (it holds no per-layer state, only constants): statevectors without gate noise,
    density matrices with it; only the first ``circuit_layers`` layers if given (the
    crx-ring ansatz only)."""
    shapes = weight_shapes(n_qubits, n_layers, entangler)
    gates = (ansatz_gates(n_qubits, n_layers, entangler) if circuit_layers is None
             else active_gates(n_qubits, n_layers, circuit_layers))
    if gate_noise:
        return TorchDensityMatrixExecutor(gates, n_qubits, shapes, readout, gate_noise)
    return TorchStatevectorExecutor(gates, n_qubits, shapes, readout)


def _best_diff_method(device_name: str) -> str:
    """Resolve ``diff_method="best"``: backprop on ``default.*`` (whole batch in one
    differentiable simulation), adjoint on ``lightning.*`` (which has no backprop; adjoint
    differentiates expectation values only, which is why :func:`quantum.names.training_problem`
    refuses probabilities there), and PennyLane's own choice elsewhere."""
    if device_name.startswith("default."):
        return "backprop"
    if device_name.startswith("lightning."):
        return "adjoint"
    return "best"


def _measured_ansatz(
    features: Any, rotation_weights: Any, crx_weights: Any = None, *, wires: list[int],
    readout: str,
) -> Any:
    """The ansatz and its read-out, as a QNode's quantum function (module level, so that
    the layer pickles); without ``crx_weights`` (``entangler="none"``) it has no CRX ring."""
    from quantum.ansatz import ansatz, measurements  # PennyLane operations

    ansatz(features, rotation_weights, crx_weights, wires=wires)
    measured = measurements(readout, wires)
    return tuple(measured) if readout == "expval" else measured[0]


def _make_qnode(
    device_name: str,
    n_qubits: int,
    readout: str,
    diff_method: str,
    noise_model: qml.NoiseModel | None,
) -> Any:
    """Build the ansatz's QNode on a PennyLane device, with the torch interface."""
    import pennylane as qml  # only the device backends need it
    from pennylane.exceptions import DeviceError

    try:
        device = qml.device(device_name, wires=n_qubits)
    except DeviceError as error:
        raise ValueError(
            f"backend={device_name!r} is not available ({error}); allowed: "
            f"{TORCH_BACKEND!r} or a PennyLane device such as {', '.join(PENNYLANE_DEVICES)}"
        ) from error
    if diff_method == "best":
        diff_method = _best_diff_method(device_name)
    circuit = functools.partial(_measured_ansatz, wires=list(range(n_qubits)), readout=readout)
    qnode = qml.QNode(circuit, device, interface="torch", diff_method=diff_method)
    if noise_model is not None:
        qnode = qml.noise.add_noise(qnode, noise_model)
    return qnode
