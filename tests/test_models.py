"""The compared models: shapes, gradient flow, matched sizes, angle names, errors."""

from __future__ import annotations

import math

import pytest
import torch

from quantum.layer import QuantumLayer
from quantum.models import (
    MODEL_NAMES,
    ClassicalBottleneck,
    angle_parameter_names,
    angle_periods,
    build_model,
    count_parameters,
)


def tiny_images(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_maps_images_to_class_logits(name: str) -> None:
    model = build_model(name, seed=0)
    logits = model(tiny_images())
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()
    assert build_model(name, num_classes=4, seed=0)(tiny_images()).shape == (3, 4)


@pytest.mark.parametrize("readout", ["expval", "probs"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_every_parameter(name: str, readout: str) -> None:
    model = build_model(name, readout=readout, seed=1)
    labels = torch.tensor([0, 3, 9])
    torch.nn.functional.cross_entropy(model(tiny_images()), labels).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


def test_hybrid_model_contains_the_quantum_layer() -> None:
    model = build_model("hybrid", n_qubits=3, n_layers=2, readout="probs", seed=0)
    assert isinstance(model.quantum, QuantumLayer)
    assert model.quantum.out_features == 8
    assert model.head.in_features == 8


@pytest.mark.parametrize("readout", ["expval", "probs"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("n_qubits", [1, 2, 3, 4, 5])
def test_classical_bottleneck_matches_the_quantum_layer(
    n_qubits: int, n_layers: int, readout: str
) -> None:
    hybrid = build_model("hybrid", n_qubits=n_qubits, n_layers=n_layers, readout=readout)
    classical = build_model("classical", n_qubits=n_qubits, n_layers=n_layers, readout=readout)
    assert classical.bottleneck.out_features == hybrid.quantum.out_features
    outputs = classical.bottleneck(torch.randn(64, n_qubits))
    if readout == "expval":
        quantum_size = count_parameters(hybrid.quantum)
        assert abs(count_parameters(classical.bottleneck) - quantum_size) <= 0.25 * quantum_size
        assert outputs.abs().max() < 1
    else:
        assert (outputs >= 0).all()
        assert torch.allclose(outputs.sum(-1), torch.ones(64))


def test_default_bottlenecks_have_equal_size_and_the_models_share_everything_else() -> None:
    hybrid, classical = build_model("hybrid"), build_model("classical")
    assert count_parameters(hybrid.quantum) == count_parameters(classical.bottleneck) == 32
    assert count_parameters(hybrid) == count_parameters(classical)
    cnn = build_model("cnn")
    assert count_parameters(cnn.trunk) == count_parameters(hybrid.trunk)


def test_angle_parameter_names_are_the_quantum_state_dict_keys() -> None:
    hybrid = build_model("hybrid", seed=0)
    names = angle_parameter_names(hybrid)
    assert names == ["quantum.rotation_weights", "quantum.crx_weights"]
    assert set(names) <= set(hybrid.state_dict())
    assert angle_periods(hybrid) == {
        "quantum.rotation_weights": 2 * math.pi,
        "quantum.crx_weights": 4 * math.pi,
    }
    assert angle_parameter_names(build_model("classical")) == []
    assert angle_parameter_names(build_model("cnn")) == []


def test_angle_names_follow_nested_quantum_layers() -> None:
    wrapper = torch.nn.Sequential(torch.nn.Identity(), QuantumLayer(2, 1))
    assert angle_parameter_names(wrapper) == ["1.rotation_weights", "1.crx_weights"]
    assert angle_parameter_names(QuantumLayer(2, 1)) == ["rotation_weights", "crx_weights"]


def test_count_parameters_counts_scalars() -> None:
    bottleneck = ClassicalBottleneck(4, 2)
    assert count_parameters(bottleneck) == 2 * 4 * 4
    model = build_model("cnn")
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_seed_fixes_the_initial_weights_without_touching_global_state(name: str) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(name, seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    second = build_model(name, seed=5)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    other = build_model(name, seed=6)
    assert not torch.equal(first.head.weight, other.head.weight)


def test_hybrid_model_gives_the_same_logits_on_default_qubit() -> None:
    fast = build_model("hybrid", seed=3)
    reference = build_model("hybrid", backend="default.qubit", seed=3)
    images = tiny_images(2)
    with torch.no_grad():
        assert torch.allclose(fast(images), reference(images), atol=1e-4, rtol=0)


def test_unknown_model_name_lists_the_allowed_ones() -> None:
    expected = "model 'quantum' is not known; allowed: hybrid, classical, cnn"
    with pytest.raises(ValueError, match=expected):
        build_model("quantum")


@pytest.mark.parametrize("name", ["hybrid", "classical"])
def test_invalid_quantum_settings_are_rejected_before_building(name: str) -> None:
    with pytest.raises(ValueError, match="readout='amplitudes' is not supported"):
        build_model(name, readout="amplitudes")
    with pytest.raises(ValueError, match="n_qubits=0 is not supported"):
        build_model(name, n_qubits=0)
    with pytest.raises(ValueError, match="n_layers=0 is not supported"):
        build_model(name, n_layers=0)
