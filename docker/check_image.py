"""Build-time check of the image: the stack imports and the default model trains on the CPU.

Run by the Dockerfile after the install (``python docker/check_image.py``): a build whose
torch cannot load its libraries, or whose project install lacks the bundled MNIST, fails
here instead of in the first federated round.
"""

from __future__ import annotations

import flwr
import pennylane
import torch
import torchvision

from quantum.models import build_model
from task.archives import find_archives


def main() -> None:
    """One forward/backward/step of the default hybrid model on a random batch."""
    model = build_model("hybrid", seed=0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimiser.step()
    if not torch.isfinite(loss):
        raise SystemExit(f"the hybrid model's loss is {loss.item()} on a random batch")
    print(
        f"image check: torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), "
        f"torchvision {torchvision.__version__}, pennylane {pennylane.__version__}, "
        f"flwr {flwr.__version__}; hybrid model loss {loss.item():.3f}; "
        f"MNIST archives in {find_archives('mnist')}"
    )


if __name__ == "__main__":
    main()
