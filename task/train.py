"""Local training and evaluation of a model on tensors, shared by clients and server."""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import nn

from quantum.models import angle_periods, build_model
from task.config import RunConfig
from task.data import Images
from task.devices import UavDevice


class Adam:
    """Adam (Kingma and Ba 2015) as ``torch.optim.Adam`` computes it on the CPU, and no more.

    The same arithmetic, in the same order, as torch's default path for CPU tensors
    (``torch.optim.adam._single_tensor_adam`` without weight decay, amsgrad or
    maximize), so training gives bit-identical models (``tests/test_train.py`` checks
    it). Why not torch's: every ``torch.optim`` optimizer imports ``torch._dynamo``
    when first constructed and stepped (its methods are wrapped for ``torch.compile``),
    3.3 s and 150 MiB here (sympy, triton), paid by every ClientApp process, since
    Flower starts one per message; this project never compiles.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        """Drop the gradients (``set_to_none``, torch's default)."""
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        beta1, beta2 = self.beta1, self.beta2
        for index, param in enumerate(self.params):
            grad = param.grad
            if grad is None:
                continue
            if index not in self.state:
                self.state[index] = (
                    torch.tensor(0.0, dtype=torch.get_default_dtype()),
                    torch.zeros_like(param, memory_format=torch.preserve_format),
                    torch.zeros_like(param, memory_format=torch.preserve_format),
                )
            step_t, exp_avg, exp_avg_sq = self.state[index]
            step_t += 1
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = step_t.item()
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = self.lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)


def model_from_config(config: RunConfig, uav: UavDevice | None = None) -> nn.Module:
    """Build the model named by the run config, seeded by its ``seed``.

    ``uav`` (:func:`task.devices.uav_device`) is one UAV's device and circuit depth;
    without it the circuit runs on run config ``device`` (noiseless if empty) with all
    its layers, as the ServerApp evaluates. A device's profile comes from the cache
    (:func:`quantum.calibration.device_profile`; qiskit only if it is missing).
    """
    uav = uav or UavDevice(config.device, config.n_layers)
    device = None
    if uav.device:
        from quantum.calibration import device_profile  # only with a device

        device = device_profile(uav.device, config.n_qubits)
    return build_model(
        config.model,
        n_qubits=config.n_qubits,
        n_layers=config.n_layers,
        readout=config.readout,
        backend=config.quantum_backend,
        seed=config.seed,
        gate_noise=config.gate_noise,
        circuit_shots=config.circuit_shots,
        device=device,
        circuit_layers=uav.n_layers if uav.n_layers < config.n_layers else None,
        entangler=config.entangler,
    )


class ProximalTerm:
    """FedProx's proximal term (Li et al. 2020), ``mu/2 * ||w - w_global||^2``.

    ``w_global`` is the model's parameters when the term is made (the global model the
    UAV received). For rotation angles the difference is wrapped into half a period,
    ``d - P round(d / P)``, so an angle pulled back to its global value goes the short way
    round (3.1 and -3.1 are 0.08 apart, not 6.2); ``round`` has no gradient, so the pull is
    ``mu`` times the wrapped difference.
    """

    def __init__(self, model: nn.Module, mu: float) -> None:
        self.mu = mu
        periods = angle_periods(model)
        self.terms = [
            (param, param.detach().clone(), periods.get(name))
            for name, param in model.named_parameters() if param.requires_grad
        ]

    def __call__(self) -> torch.Tensor:
        """The term's value for the parameters as they are now (differentiable)."""
        total = torch.zeros(())
        for param, start, period in self.terms:
            diff = param - start
            if period is not None:
                diff = diff - period * torch.round(diff / period)
            total = total + (diff**2).sum()
        return 0.5 * self.mu * total


def train_local(
    model: nn.Module,
    images: torch.Tensor | Images,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> dict[str, float]:
    """Train with Adam and cross-entropy over shuffled mini-batches.

    With ``proximal_mu`` > 0 each batch's loss adds FedProx's :class:`ProximalTerm`
    towards the model as it was handed in (run config ``proximal-mu``); the reported
    ``train-loss`` stays the cross-entropy. At 0 nothing is added: training is the same
    computation as without the argument.

    Returns
    -------
    dict[str, float]
        ``train-loss`` and ``train-accuracy`` of the last epoch (averaged over its
        batches as they were seen) and ``train-seconds`` of wall time.
    """
    started = time.perf_counter()
    model.train()
    optimizer = Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    proximal = ProximalTerm(model, proximal_mu) if proximal_mu > 0 else None
    generator = torch.Generator().manual_seed(seed)
    loss_sum, correct = 0.0, 0
    # The seed also drives the only stochastic forward pass (a finite-shot read-out);
    # the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _epoch in range(epochs):
            loss_sum, correct = 0.0, 0
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(labels), batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad()
                logits = model(images[batch])
                loss = loss_fn(logits, labels[batch])
                (loss if proximal is None else loss + proximal()).backward()
                optimizer.step()
                loss_sum += loss.item() * len(batch)
                correct += int((logits.argmax(1) == labels[batch]).sum())
    count = max(len(labels), 1)
    return {
        "train-loss": loss_sum / count,
        "train-accuracy": correct / count,
        "train-seconds": time.perf_counter() - started,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor | Images,
    labels: torch.Tensor,
    batch_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on the given samples.

    ``seed`` seeds a finite-shot read-out, the only randomness a forward pass has; the
    caller's random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _evaluate_batches(model, images, labels, batch_size)


def _evaluate_batches(
    model: nn.Module, images: torch.Tensor | Images, labels: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size])
        target = labels[start : start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum())
    count = max(len(labels), 1)
    return loss_sum / count, correct / count
