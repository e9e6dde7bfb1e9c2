"""Gate noise (torch density matrices vs PennyLane default.mixed) and finite shots."""

import math

import pytest
import torch

from quantum.ansatz import ansatz, weight_shapes
from quantum.layer import QuantumLayer
from quantum.mixed import TorchDensityMatrixExecutor
from quantum.models import build_model
from quantum.noise import (
    expvals_from_probabilities,
    sample_probabilities,
)
from task.config import RunConfigError, parse_run_config
from task.train import evaluate, model_from_config


def _outputs_and_grads(run, features, weights):
    outputs = run(features, *weights)
    mix = torch.linspace(-1.0, 1.0, outputs.numel(), dtype=outputs.dtype)
    grads = torch.autograd.grad((outputs.reshape(-1) * mix).sum(), [features, *weights])
    return outputs, *grads


@pytest.mark.parametrize("readout", ["expval", "probs"])
@pytest.mark.parametrize("p", [0.0, 0.01, 0.2])
def test_torch_density_matrices_match_default_mixed_with_the_noise_model(p, readout):
    features = (torch.rand(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
                * 2 * math.pi - math.pi).requires_grad_()
    reference = QuantumLayer(3, 2, readout, backend="default.mixed", init_seed=7,
                             gate_noise=p).double()
    weights = [reference.rotation_weights, reference.crx_weights]
    executor = TorchDensityMatrixExecutor(ansatz, 3, weight_shapes(3, 2), readout, p)
    ours = _outputs_and_grads(executor, features, weights)
    theirs = _outputs_and_grads(lambda x, *w: reference(x), features, weights)
    # default.mixed itself agrees with default.qubit only to ~1e-7: hence the tolerance.
    for mine, other in zip(ours, theirs, strict=True):
        assert torch.allclose(mine, other, atol=1e-6, rtol=0), (mine - other).abs().max()


def test_full_depolarizing_noise_leaves_every_wire_maximally_mixed():
    # p = 3/4 after each wire's last gate sends its reduced state to I/2: <Z> = 0.
    layer = QuantumLayer(4, 2, init_seed=1, gate_noise=0.75).double()
    outputs = layer(torch.rand(6, 4, dtype=torch.float64))
    assert torch.allclose(outputs, torch.zeros_like(outputs), atol=1e-12)


def test_gate_noise_pulls_expectation_values_towards_zero():
    features = torch.rand(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    norms = [QuantumLayer(4, 2, init_seed=1, gate_noise=p).double()(features).abs().mean()
             for p in (0.0, 0.01, 0.1)]
    assert norms[0] > norms[1] > norms[2] > 0


def test_shot_estimates_have_the_multinomial_mean_and_variance():
    probabilities = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64).repeat(20_000, 1)
    shots = 100
    estimates = sample_probabilities(probabilities, shots, torch.Generator().manual_seed(1))
    assert torch.allclose(estimates.sum(-1), torch.ones(20_000, dtype=torch.float64))
    counts = estimates * shots
    assert torch.all((counts - counts.round()).abs() < 1e-9)  # whole counts
    p = probabilities[0]
    standard_error = (p * (1 - p) / shots / 20_000).sqrt()
    assert torch.all((estimates.mean(0) - p).abs() < 5 * standard_error)
    assert torch.allclose(estimates.var(0), p * (1 - p) / shots, rtol=0.05)


def test_shot_estimates_pass_the_exact_gradient_through():
    probabilities = torch.tensor([[0.2, 0.8]], dtype=torch.float64, requires_grad=True)
    estimate = sample_probabilities(probabilities, 10, torch.Generator().manual_seed(0))
    (estimate * torch.tensor([[1.0, 3.0]], dtype=torch.float64)).sum().backward()
    assert probabilities.grad.tolist() == [[1.0, 3.0]]


def test_expvals_from_probabilities_follow_wire_order():
    probabilities = torch.zeros(1, 8, dtype=torch.float64)
    probabilities[0, 0b011] = 1.0  # wire 0 = 0, wires 1 and 2 = 1
    assert expvals_from_probabilities(probabilities, 3).tolist() == [[1.0, -1.0, -1.0]]


def test_finite_shots_scatter_outputs_around_the_exact_ones():
    features = torch.rand(400, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = QuantumLayer(4, 2, init_seed=1).double()(features)
    torch.manual_seed(0)
    sampled = QuantumLayer(4, 2, init_seed=1, shots=1000).double()(features)
    error = sampled - exact
    assert error.abs().max() > 0
    # <Z> from N shots has variance (1 - <Z>^2) / N.
    assert torch.allclose(error.var(), ((1 - exact**2) / 1000).mean(), rtol=0.2)


def test_shot_noise_is_seeded_by_the_evaluation_seed():
    config = parse_run_config({}, {"circuit-shots": 50})
    model = model_from_config(config)
    images = torch.randn(64, 1, 28, 28)
    labels = torch.randint(0, 10, (64,))
    assert evaluate(model, images, labels, seed=3) == evaluate(model, images, labels, seed=3)
    assert evaluate(model, images, labels, seed=3) != evaluate(model, images, labels, seed=4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "classical", "gate-noise": 0.01}, "'gate-noise' acts on the quantum layer"),
        ({"model": "cnn", "circuit-shots": 100}, "'circuit-shots' acts on the quantum layer"),
        ({"gate-noise": 0.01, "quantum-backend": "default.qubit"}, "needs quantum-backend"),
        ({"gate-noise": 0.9}, "'gate-noise' = 0.9 is not allowed; use a number in [0.0, 0.75]"),
        ({"circuit-shots": -1}, "'circuit-shots' = -1 is not allowed"),
    ],
)
def test_bad_noise_settings_are_refused_with_what_is_allowed(overrides, message):
    with pytest.raises(RunConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_run_config({}, overrides)


def test_noise_settings_reach_the_quantum_layer():
    model = build_model("hybrid", seed=0, gate_noise=0.01, circuit_shots=64)
    assert model.quantum.gate_noise == 0.01 and model.quantum.shots == 64
    assert isinstance(model.quantum._executor, TorchDensityMatrixExecutor)
