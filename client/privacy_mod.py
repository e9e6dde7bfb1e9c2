"""The UAV's side of differential privacy (run config ``dp``): Flower's own mods.

``dp='client'``: Flower's :func:`~flwr.clientapp.mod.fixedclipping_mod` clips the step
from the global model to the norm the base station sends with the training message
(``strategies.qfl.QFLStrategy.dispatch_train``); the base station adds the noise.
``dp='local'``: :class:`NoisyUpdateMod`, Flower's :class:`~flwr.clientapp.mod.LocalDpMod`
with the noise given as a multiplier of the clipping norm, clips the step and adds
Gaussian noise before the update leaves the UAV. ``none`` and ``central``: nothing here.

The step is the plain difference from the global model. Training moves an angle
continuously from the value it received, so for an honest UAV that is the step on the
circle too; the base station measures every step on the circle again before it clips or
averages (:mod:`strategies.privacy`). The mod sits inside the relay mod, where updates
are plain, and inside the attack mod: a hostile UAV is one that skips it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from client.run_config import current_config

_DELTA = 1e-5
"""Any delta in (0, 1): :class:`NoisyUpdateMod` chooses LocalDpMod's epsilon so that
its noise formula gives exactly ``noise_multiplier x clipping_norm``."""


@contextmanager
def _entropy_numpy() -> Iterator[None]:
    """NumPy's global generator seeded from the OS's entropy inside the block, restored
    after. Flower's mods draw their noise from it, and the ClientApp's training may have
    seeded it from the run's seed, which the base station knows."""
    saved = np.random.get_state()
    np.random.seed(None)
    try:
        yield
    finally:
        np.random.set_state(saved)


class NoisyUpdateMod(LocalDpMod):
    """Flower's LocalDpMod with its noise set as ``noise_multiplier x clipping_norm``.

    LocalDpMod's noise is ``sensitivity x sqrt(2 ln(1.25 / delta)) / epsilon``, the
    classic Gaussian mechanism's calibration, which holds only for epsilon below 1. The
    project accounts the noise itself (:class:`strategies.privacy.PrivacyLedger`), so
    this passes ``sensitivity = noise_multiplier x clipping_norm`` and the epsilon that
    cancels the square root; the noise is drawn from the OS's entropy.
    """

    def __init__(self, clipping_norm: float, noise_multiplier: float) -> None:
        if not noise_multiplier > 0:
            raise ValueError("the noise multiplier must be positive")
        super().__init__(
            clipping_norm,
            sensitivity=noise_multiplier * clipping_norm,
            epsilon=math.sqrt(2 * math.log(1.25 / _DELTA)),
            delta=_DELTA,
        )
        self.noise_multiplier = noise_multiplier

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        """Clip and noise the reply's arrays (see :class:`flwr.clientapp.mod.LocalDpMod`)."""
        with _entropy_numpy():
            return super().__call__(msg, ctxt, call_next)


def privacy_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Clip (``dp='client'``) or clip and noise (``dp='local'``) a training reply."""
    config = current_config()
    if msg.metadata.message_type != MessageType.TRAIN or config.dp in ("none", "central"):
        return call_next(msg, ctxt)
    if config.dp == "client":
        return fixedclipping_mod(msg, ctxt, call_next)
    return NoisyUpdateMod(config.dp_clip_norm, config.dp_noise_multiplier)(msg, ctxt, call_next)
