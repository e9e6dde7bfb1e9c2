"""Differential privacy at the base station: clipped, noised means of wrapped deltas, and
the accountant that says what they cost (run config ``dp``; README: Privacy).

Flower's wrappers (``DifferentialPrivacyServerSideFixedClipping`` and the client-side
one) clip the reply's arrays before the wrapped strategy sees them and add noise to what
it returns. That does not fit here on three counts: a reply arrives teleported or sealed
and is only readable after :meth:`strategies.qfl.QFLStrategy.decode_uplink`; a rotation
angle's step must be measured on the circle (3.1 -> -3.1 is a step of 0.08, not 6.2);
and the noise must be calibrated to an unweighted mean over a fixed number of sampled
UAVs, not to a weighted circular mean. So the same steps run inside the strategy, after
the decode: Flower's own :func:`compute_clip_model_update` on each update with its angles
moved next to the global ones (:func:`nearest_angles`, the same rotations), Flower's
:func:`compute_stdv` for the noise, drawn from the operating system's entropy. The
UAV side uses Flower's mods (:mod:`client.privacy_mod`).

:class:`PrivacyLedger` is the accountant: Google's ``dp-accounting`` RDP accountant over
the releases the run actually made. Central and client modes: each round is one sampled
Gaussian mechanism, ``m`` UAVs drawn without replacement from the ``n`` that could have
been drawn, neighbouring federations differing in one UAV's whole data (replace-one,
user level). Replacing a UAV moves the sum of clipped steps by up to ``2 C``, so the
Gaussian's multiplier relative to that sensitivity is ``z / 2``. Local mode: every
update a UAV sends is its own Gaussian mechanism of sensitivity ``2 C``; the run's
epsilon is the one of the UAV that sent the most.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.supercore.differential_privacy import (
    compute_clip_model_update,
    compute_stdv,
    get_norm,
)

from strategies.names import DP_MODES
from strategies.robust import wrap_angle


@dataclass(frozen=True)
class PrivacySettings:
    """One run's differential privacy: the mode and the Gaussian mechanism's numbers.

    Parameters
    ----------
    mode : {"central", "client", "local"}
        Where updates are clipped and noised (``dp`` run config; ``none`` is no object).
    noise_multiplier : float
        ``z``: the noise's standard deviation over the clipping norm.
    clip_norm : float
        ``C``: the largest L2 norm of one UAV's step (all arrays together).
    delta : float
        The delta at which epsilon is reported.
    """

    mode: str
    noise_multiplier: float
    clip_norm: float
    delta: float

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES or self.mode == "none":
            raise ValueError(f"dp mode {self.mode!r} is not one of central, client, local")
        if not self.noise_multiplier > 0 or not self.clip_norm > 0:
            raise ValueError("dp needs a positive noise multiplier and clipping norm")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp delta {self.delta!r} must be in (0, 1)")

    @property
    def noise_at_server(self) -> bool:
        """Central and client modes: the base station clips and adds the noise."""
        return self.mode in ("central", "client")


def nearest_angles(
    values: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    periods: Mapping[str, float],
) -> dict[str, np.ndarray]:
    """``values`` with each angle array written as the reference plus its wrapped step.

    The rotations are the same (an angle and that angle plus a period rotate alike), so
    the model is unchanged; a plain difference from the reference is then the step on
    the circle, which is what clipping must bound.
    """
    moved = {}
    for name, value in values.items():
        if name in periods:
            ref = reference[name].astype(np.float64)
            value = ref + wrap_angle(value.astype(np.float64) - ref, periods[name])
        moved[name] = np.asarray(value, dtype=np.float64)
    return moved


def _float_names(reference: Mapping[str, np.ndarray]) -> list[str]:
    # Integer buffers (counters) carry no learnt values: they stay the global model's.
    return [name for name, array in reference.items() if array.dtype.kind == "f"]


def clip_step(
    values: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    periods: Mapping[str, float],
    clip_norm: float,
) -> tuple[dict[str, np.ndarray], float]:
    """One update clipped to a step of norm at most ``clip_norm`` from the reference.

    Returns the clipped update (float64, angles next to the reference) and the norm of
    its step before clipping. Flower's :func:`compute_clip_model_update` does the
    clipping, on all floating-point arrays together.
    """
    names = _float_names(reference)
    moved = nearest_angles({name: values[name] for name in names}, reference, periods)
    arrays = [moved[name] for name in names]
    base = [reference[name].astype(np.float64) for name in names]
    norm = get_norm([array - ref for array, ref in zip(arrays, base, strict=True)])
    compute_clip_model_update(arrays, base, clip_norm)
    return dict(zip(names, arrays, strict=True)), norm


def noisy_mean(
    clipped: Sequence[Mapping[str, np.ndarray]],
    reference: Mapping[str, np.ndarray],
    periods: Mapping[str, float],
    settings: PrivacySettings,
    sampled: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The global model plus the sum of the clipped steps over ``sampled``, plus noise.

    The denominator is the number of UAVs sampled for the round, not the number whose
    update arrived: a fixed denominator keeps one UAV's influence at ``C / sampled``
    whatever happens to the others (McMahan et al., ICLR 2018). The Gaussian noise has
    standard deviation ``z C / sampled`` (Flower's :func:`compute_stdv`) on every
    coordinate. Angles are wrapped back into their period; arrays keep their dtype.
    """
    std = compute_stdv(settings.noise_multiplier, settings.clip_norm, sampled)
    result: dict[str, np.ndarray] = {}
    floats = set(_float_names(reference))
    for name, ref in reference.items():
        if name not in floats:
            result[name] = ref.copy()
            continue
        base = ref.astype(np.float64)
        step = np.zeros_like(base)
        for update in clipped:
            step += update[name] - base
        value = base + step / sampled + rng.normal(0.0, std, size=base.shape)
        if name in periods:
            value = wrap_angle(value, periods[name])
        result[name] = value.astype(ref.dtype)
    return result


def private_mean(
    updates: Sequence[Mapping[str, np.ndarray]],
    reference: Mapping[str, np.ndarray],
    periods: Mapping[str, float],
    settings: PrivacySettings,
    sampled: int,
    rng: np.random.Generator,
) -> tuple[ArrayRecord, int]:
    """Clip every update (:func:`clip_step`) and return their :func:`noisy_mean` over
    ``sampled``, with the number of updates whose step was longer than the clip."""
    clipped, longer = [], 0
    for values in updates:
        update, norm = clip_step(values, reference, periods, settings.clip_norm)
        clipped.append(update)
        # A step a UAV clipped in float32 may measure a few ulps longer here.
        longer += norm > settings.clip_norm * (1 + 1e-5)
    mean = noisy_mean(clipped, reference, periods, settings, sampled, rng)
    return ArrayRecord({name: Array(np.ascontiguousarray(value))
                        for name, value in mean.items()}), longer


def noise_generator() -> np.random.Generator:
    """A generator seeded from the operating system's entropy, never from ``seed``.

    A run config is not secret (it is in ``config.json``); noise that anyone can draw
    again can be subtracted again, and protects nothing.
    """
    return np.random.default_rng()


class PrivacyLedger:
    """The accountant of one run: what has been released, and the epsilon it costs.

    Central and client modes record one release per round (:meth:`release`); local mode
    records which UAVs sent an update (:meth:`participate`). :meth:`epsilon` composes
    them with ``dp-accounting``'s RDP accountant at ``settings.delta``. :meth:`state`
    and :meth:`load_state` carry the ledger across a resume.
    """

    def __init__(self, settings: PrivacySettings) -> None:
        self.settings = settings
        self.releases: list[tuple[int, int]] = []
        self.participation: dict[str, int] = {}
        self._epsilon: float | None = 0.0

    def release(self, population: int, sampled: int) -> None:
        """One round's noised mean of ``sampled`` UAVs drawn from ``population``."""
        if not 1 <= sampled <= population:
            raise ValueError(f"a release of {sampled} of {population} UAVs cannot be accounted")
        self.releases.append((population, sampled))
        self._epsilon = None

    def participate(self, senders: Sequence[str]) -> None:
        """Each of ``senders`` (UAV ids, which outlive a node's id) sent one locally
        noised update."""
        for sender in senders:
            self.participation[sender] = self.participation.get(sender, 0) + 1
        self._epsilon = None

    def epsilon(self) -> float:
        """Epsilon spent so far, at ``settings.delta`` (0 before any release)."""
        if self._epsilon is None:
            self._epsilon = self._compute()
        return self._epsilon

    def _compute(self) -> float:
        from dp_accounting import dp_event
        from dp_accounting.privacy_accountant import NeighboringRelation
        from dp_accounting.rdp import RdpAccountant

        # Sensitivity 2 C under replace-one; the noise is z C: multiplier z / 2.
        gaussian = dp_event.GaussianDpEvent(self.settings.noise_multiplier / 2)
        if self.settings.mode == "local":
            most = max(self.participation.values(), default=0)
            if most == 0:
                return 0.0
            accountant = RdpAccountant()
            accountant.compose(gaussian, most)
            return float(accountant.get_epsilon(self.settings.delta))
        if not self.releases:
            return 0.0
        # Sampling can only help: a round is also a Gaussian of multiplier z / 2 without
        # it. At small z, Wang et al.'s bound for sampling without replacement is looser
        # than that, so the run's epsilon is the smaller of the two compositions.
        sampled_bound = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
        plain_bound = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
        counts: dict[tuple[int, int], int] = {}
        for release in self.releases:
            counts[release] = counts.get(release, 0) + 1
        for (population, sampled), count in counts.items():
            event = (
                gaussian if sampled == population
                else dp_event.SampledWithoutReplacementDpEvent(population, sampled, gaussian)
            )
            sampled_bound.compose(event, count)
            plain_bound.compose(gaussian, count)
        return float(min(sampled_bound.get_epsilon(self.settings.delta),
                         plain_bound.get_epsilon(self.settings.delta)))

    def state(self) -> dict[str, Any]:
        """The ledger as plain values, for a checkpoint."""
        return {
            "releases": [list(release) for release in self.releases],
            "participation": dict(self.participation),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`'s values (a resumed run goes on spending from there)."""
        try:
            releases = [(int(n), int(m)) for n, m in state["releases"]]
            participation = {str(sender): int(count)
                             for sender, count in dict(state["participation"]).items()}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"the checkpoint's privacy ledger is unreadable: {error}") from None
        if any(not 1 <= m <= n for n, m in releases) or any(
            c < 1 for c in participation.values()
        ):
            raise ValueError("the checkpoint's privacy ledger has impossible releases")
        self.releases, self.participation = releases, participation
        self._epsilon = None
