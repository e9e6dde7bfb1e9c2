"""task.train: our Adam gives exactly what torch's gives, and training loads no torch._dynamo."""

import copy
import subprocess
import sys

import pytest
import torch

from task.config import parse_run_config
from task.train import Adam, model_from_config


@pytest.mark.parametrize("model", ["hybrid", "classical", "cnn"])
def test_our_adam_gives_bit_identical_models_to_torch_adam(model):
    torch.manual_seed(3)
    ours = model_from_config(parse_run_config({"model": model}))
    theirs = copy.deepcopy(ours)
    optimizers = (Adam(ours.parameters(), lr=3e-3), torch.optim.Adam(theirs.parameters(), lr=3e-3))
    generator = torch.Generator().manual_seed(5)
    for _step in range(25):
        images = torch.randn(16, 1, 28, 28, generator=generator)
        labels = torch.randint(0, 10, (16,), generator=generator)
        for net, optimizer in zip((ours, theirs), optimizers, strict=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(images), labels).backward()
            optimizer.step()
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_a_parameter_without_gradient_is_left_alone_and_zero_grad_drops_gradients():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimizer = Adam([used, unused], lr=0.1)
    (used * 2).sum().backward()
    optimizer.step()
    assert torch.equal(unused, torch.ones(2)) and not torch.equal(used, torch.ones(3))
    optimizer.zero_grad()
    assert used.grad is None


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_training_step_loads_neither_torch_dynamo_nor_sympy():
    code = (
        "import sys, torch; from task.config import parse_run_config; "
        "from task.train import model_from_config, train_local; "
        "m = model_from_config(parse_run_config({})); "
        "train_local(m, torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)), epochs=1, "
        "batch_size=32, learning_rate=1e-3, seed=0); "
        "print(sorted(n for n in ('torch._dynamo', 'sympy', 'triton', 'pennylane', "
        "'matplotlib', 'torchvision') if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
