"""The three models compared: hybrid quantum, classical bottleneck, and plain CNN.

All three share one small CNN trunk for 1x28x28 images, so that any difference comes from
what follows it:

- ``hybrid``: trunk -> ``Linear(32, n_qubits)`` -> ``pi * tanh`` -> :class:`QuantumLayer`
  -> times :data:`READOUT_SCALE` -> ``Linear(out_features, num_classes)``.
- ``classical``: the same, with the quantum layer replaced by :class:`ClassicalBottleneck`,
  which has the same output width and range and about the same number of parameters.
- ``cnn``: trunk -> ``Linear(32, num_classes)``, no bottleneck.

The ``pi * tanh`` map keeps the encoding angles in (-pi, pi), where ``RY`` encoding is
one-to-one on the Bloch circle's meridian, so the circuit never sees two inputs that
differ by a full turn.

The bottleneck's outputs are bounded (``expval`` in [-1, 1], ``probs`` in [0, 1]), so a
linear head needs large weights for confident logits, and Adam moves each weight by about
the learning rate per step. Multiplying the outputs by the fixed :data:`READOUT_SCALE`
(the same for ``hybrid`` and ``classical``) lets the head reach them in a few hundred
steps at lr 1e-3 instead of thousands.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from quantum.circuit import readout_size
from quantum.devices import DeviceProfile
from quantum.layer import ANGLE_PERIODS, QuantumLayer, check_layer_arguments
from quantum.names import DEFAULT_ENTANGLER, MODEL_NAMES, TORCH_BACKEND

"""Names accepted by :func:`build_model`."""

TRUNK_WIDTH = 32
"""Number of features the CNN trunk outputs."""

READOUT_SCALE = 10.0
"""Factor applied to the bottleneck's bounded outputs before the linear head."""


def conv_trunk() -> nn.Sequential:
    """The shared CNN feature extractor: 1x28x28 images to ``TRUNK_WIDTH`` features.

    One 7x7 convolution with stride 4 (16 channels, 28 -> 6 pixels), then a fully
    connected layer. It is small on purpose. On one CPU thread a convolution's backward
    pass costs about 0.2 ms whatever its size, so every extra convolution would add about
    half as much to a training step as the whole quantum layer; with one, a batch-32
    step of the hybrid model takes about 1.5 ms and the quantum layer's cost stays
    visible. The ``cnn`` model still reaches about 0.92 test accuracy after 2 epochs on
    5,000 MNIST images.

    Returns
    -------
    torch.nn.Sequential
        Maps ``(batch, 1, 28, 28)`` to ``(batch, TRUNK_WIDTH)``.
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=7, stride=4),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(16 * 6 * 6, TRUNK_WIDTH),
        nn.ReLU(inplace=True),
    )


def to_angles(features: torch.Tensor) -> torch.Tensor:
    """Map real features to encoding angles in (-pi, pi) with ``pi * tanh``.

    Parameters
    ----------
    features : torch.Tensor
        Any shape.

    Returns
    -------
    torch.Tensor
        Same shape, values in (-pi, pi).
    """
    return math.pi * torch.tanh(features)


class ClassicalBottleneck(nn.Module):
    """A classical stand-in for :class:`QuantumLayer` with the same output width and range.

    ``depth`` stacked ``tanh(Linear(width, width, bias=False))`` layers; for the
    ``"probs"`` read-out they are followed by ``softmax(Linear(width, 2**width))``.

    Parameters
    ----------
    width : int
        Number of inputs (the quantum layer's ``n_qubits``).
    depth : int
        Number of ``tanh`` layers.
    readout : str
        ``"expval"``: ``width`` outputs in (-1, 1). ``"probs"``: ``2**width`` outputs that
        are non-negative and sum to 1.
    """

    def __init__(self, width: int, depth: int, readout: str = "expval") -> None:
        super().__init__()
        self.readout = readout
        self.out_features = readout_size(readout, width)
        self.layers = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        self.to_probs = (
            nn.Linear(width, self.out_features, bias=False) if readout == "probs" else None
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the bottleneck to ``(batch, width)`` features."""
        for layer in self.layers:
            features = torch.tanh(layer(features))
        if self.to_probs is not None:
            features = torch.softmax(self.to_probs(features), dim=-1)
        return features


def matched_depth(n_qubits: int, n_layers: int) -> int:
    """Depth of the :class:`ClassicalBottleneck` matched to a quantum layer's size.

    The quantum layer has ``4 * n_layers * n_qubits`` angles and a ``tanh`` layer has
    ``n_qubits**2`` weights, so the depth is ``round(4 * n_layers / n_qubits)``, at
    least 1: exactly ``n_layers`` (and equal sizes) for the default 4 qubits, sizes
    within 25% for up to 5 qubits and 1 to 3 layers. It is matched to the default
    ``entangler="crx-ring"`` layer: the twin stands for the hybrid model as designed, and
    ``entangler="none"`` (``3 * n_layers * n_qubits`` angles) is an ablation of the
    hybrid model, compared with the hybrid model rather than with a twin of its own.

    Parameters
    ----------
    n_qubits, n_layers : int
        The quantum layer's width and depth.

    Returns
    -------
    int
        Number of ``tanh`` layers.
    """
    return max(1, round(4 * n_layers / n_qubits))


class HybridNet(nn.Module):
    """CNN trunk -> ``n_qubits`` angles -> :class:`QuantumLayer` -> linear classifier.

    Parameters
    ----------
    n_qubits, n_layers, readout, backend, gate_noise, shots, device, circuit_layers,
    entangler
        Passed to :class:`QuantumLayer`.
    num_classes : int
        Number of output logits.
    readout_scale : float
        Factor on the quantum layer's outputs before the head.
    """

    def __init__(
        self,
        n_qubits: int = 4,
        n_layers: int = 2,
        readout: str = "expval",
        backend: str = TORCH_BACKEND,
        num_classes: int = 10,
        readout_scale: float = READOUT_SCALE,
        gate_noise: float = 0.0,
        shots: int = 0,
        device: DeviceProfile | None = None,
        circuit_layers: int | None = None,
        entangler: str = DEFAULT_ENTANGLER,
    ) -> None:
        super().__init__()
        self.readout_scale = readout_scale
        self.trunk = conv_trunk()
        self.encoder = nn.Linear(TRUNK_WIDTH, n_qubits)
        self.quantum = QuantumLayer(
            n_qubits, n_layers, readout=readout, backend=backend, gate_noise=gate_noise,
            shots=shots, device=device, circuit_layers=circuit_layers,
            entangler=entangler,
        )
        self.head = nn.Linear(self.quantum.out_features, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, 1, 28, 28)`` images to ``(batch, num_classes)`` logits."""
        angles = to_angles(self.encoder(self.trunk(images)))
        return self.head(self.readout_scale * self.quantum(angles))


class ClassicalNet(nn.Module):
    """:class:`HybridNet` with the quantum layer replaced by a :class:`ClassicalBottleneck`.

    Parameters
    ----------
    n_qubits, n_layers, readout
        The quantum layer being replaced; the bottleneck has its width, read-out range
        and (through :func:`matched_depth`) about its parameter count.
    num_classes : int
        Number of output logits.
    readout_scale : float
        Factor on the bottleneck's outputs before the head.
    """

    def __init__(
        self,
        n_qubits: int = 4,
        n_layers: int = 2,
        readout: str = "expval",
        num_classes: int = 10,
        readout_scale: float = READOUT_SCALE,
    ) -> None:
        super().__init__()
        self.readout_scale = readout_scale
        self.trunk = conv_trunk()
        self.encoder = nn.Linear(TRUNK_WIDTH, n_qubits)
        self.bottleneck = ClassicalBottleneck(
            n_qubits, matched_depth(n_qubits, n_layers), readout=readout
        )
        self.head = nn.Linear(self.bottleneck.out_features, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, 1, 28, 28)`` images to ``(batch, num_classes)`` logits."""
        angles = to_angles(self.encoder(self.trunk(images)))
        return self.head(self.readout_scale * self.bottleneck(angles))


class CNN(nn.Module):
    """The CNN trunk and a linear classifier, without a bottleneck.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.trunk = conv_trunk()
        self.head = nn.Linear(TRUNK_WIDTH, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, 1, 28, 28)`` images to ``(batch, num_classes)`` logits."""
        return self.head(self.trunk(images))


def build_model(
    name: str,
    n_qubits: int = 4,
    n_layers: int = 2,
    readout: str = "expval",
    backend: str = TORCH_BACKEND,
    num_classes: int = 10,
    seed: int | None = None,
    gate_noise: float = 0.0,
    circuit_shots: int = 0,
    device: DeviceProfile | None = None,
    circuit_layers: int | None = None,
    entangler: str = DEFAULT_ENTANGLER,
) -> nn.Module:
    """Build one of the compared models by name.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`.
    n_qubits, n_layers, readout
        Size and read-out of the quantum layer (``hybrid``) or of the layer it is matched
        to (``classical``); ignored by ``cnn``.
    backend : str
        Backend of the quantum layer (``hybrid`` only): ``"torch"`` or a PennyLane device.
    num_classes : int
        Number of output logits.
    seed : int or None
        Seed of the initial weights. The global torch random state is left untouched;
        ``None`` draws from it.
    gate_noise, circuit_shots
        Depolarizing probability per gate and wire, and measurement shots (0: exact),
        of the quantum layer (``hybrid`` only; see :class:`QuantumLayer`).
    device, circuit_layers
        The device the quantum layer runs as on, and how many of its layers the circuit
        runs (``hybrid`` only; see :class:`QuantumLayer`).
    entangler : str
        The quantum layer's entangling gates (``hybrid`` only): ``"crx-ring"`` or
        ``"none"``. ``classical`` stays matched to the ``"crx-ring"`` layer
        (:func:`matched_depth`).

    Returns
    -------
    torch.nn.Module
        The model, mapping ``(batch, 1, 28, 28)`` images to ``(batch, num_classes)``.

    Raises
    ------
    ValueError
        For an unknown name, or (``hybrid``, ``classical``) invalid quantum-layer settings.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"model {name!r} is not known; allowed: {', '.join(MODEL_NAMES)}")
    if name != "cnn":
        check_layer_arguments(n_qubits, n_layers, readout)
    if name != "hybrid" and (gate_noise or circuit_shots or device or circuit_layers
                             or entangler != DEFAULT_ENTANGLER):
        raise ValueError(
            "gate_noise, circuit_shots, device, circuit_layers and entangler act on the "
            f"quantum layer; model {name!r} has none (use model 'hybrid')"
        )
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if name == "hybrid":
            return HybridNet(
                n_qubits, n_layers, readout, backend, num_classes, gate_noise=gate_noise,
                shots=circuit_shots, device=device, circuit_layers=circuit_layers,
                entangler=entangler,
            )
        if name == "classical":
            return ClassicalNet(n_qubits, n_layers, readout, num_classes)
        return CNN(num_classes)


def angle_periods(model: nn.Module) -> dict[str, float]:
    """The ``state_dict`` keys of a model's quantum rotation angles, with their periods.

    Parameters
    ----------
    model : torch.nn.Module
        Any model; every :class:`QuantumLayer` inside it contributes its angle tensors.

    Returns
    -------
    dict[str, float]
        For example ``{"quantum.rotation_weights": 2 pi, "quantum.crx_weights": 4 pi}``
        (no ``crx_weights`` with ``entangler="none"``); empty for models without a
        quantum layer.
    """
    periods = {}
    for module_name, module in model.named_modules():
        if isinstance(module, QuantumLayer):
            prefix = f"{module_name}." if module_name else ""
            for name in module.weight_names:
                periods[prefix + name] = ANGLE_PERIODS[name]
    return periods


def angle_parameter_names(model: nn.Module) -> list[str]:
    """The ``state_dict`` keys of a model's quantum rotation angles.

    Parameters
    ----------
    model : torch.nn.Module
        Any model.

    Returns
    -------
    list[str]
        For example ``["quantum.rotation_weights", "quantum.crx_weights"]``; empty for
        ``classical`` and ``cnn``.
    """
    return list(angle_periods(model))


def count_parameters(model: nn.Module) -> int:
    """Total number of scalar parameters of a model.

    Parameters
    ----------
    model : torch.nn.Module
        Any model.

    Returns
    -------
    int
        Sum of ``numel`` over ``model.parameters()``.
    """
    return sum(parameter.numel() for parameter in model.parameters())
