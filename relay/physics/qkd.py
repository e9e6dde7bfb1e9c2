"""BB84 error rates and key fractions (§4.1-§4.3)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from relay.physics._checks import FloatArray, as_probability

QBER_ABORT_THRESHOLD = 0.11
"""Asymptotic BB84 abort threshold: 1 - 2h(Q) crosses zero at Q = 11.0 % (§4.1)."""


def qber_from_fidelity(fidelity: ArrayLike) -> FloatArray:
    """QBER of key bits measured on Werner pairs: ``Q = (1 - p)/2 = 2(1 - F)/3``.

    Equal in the Z and X bases; F = 0.95 -> 3.3 % (§4.2, BBM92).

    Parameters
    ----------
    fidelity : array_like
        End-to-end pair fidelity.

    Returns
    -------
    numpy.ndarray
        Quantum bit error rate.
    """
    return 2.0 * (1.0 - as_probability(fidelity, "fidelity")) / 3.0



def intercept_resend_qber(qber: ArrayLike, eavesdropper_fraction: ArrayLike) -> FloatArray:
    """QBER when an intercept-resend eavesdropper attacks a fraction of the qubits.

    ``Q = Q0 + f_e (1/4 - Q0/2)``: full interception of a clean channel gives
    25 % (§4.1; Bennett & Brassard 1984).

    Parameters
    ----------
    qber : array_like
        QBER ``Q0`` without the eavesdropper.
    eavesdropper_fraction : array_like
        Intercepted fraction ``f_e`` in [0, 1].

    Returns
    -------
    numpy.ndarray
        QBER with the eavesdropper.
    """
    qber = as_probability(qber, "qber")
    fraction = as_probability(eavesdropper_fraction, "eavesdropper_fraction")
    return qber + fraction * (0.25 - qber / 2.0)



def bb84_qber(fidelity: ArrayLike, eavesdropper_fraction: ArrayLike = 0.0) -> FloatArray:
    """QBER of a relay path of the given fidelity, with an optional eavesdropper.

    :func:`qber_from_fidelity` then :func:`intercept_resend_qber` (§4.1, §4.2).
    """
    return intercept_resend_qber(qber_from_fidelity(fidelity), eavesdropper_fraction)



def binary_entropy(probability: ArrayLike) -> FloatArray:
    """Binary entropy ``h(x) = -x log2 x - (1-x) log2(1-x)``, with ``h(0) = h(1) = 0`` (§4.1)."""
    x = as_probability(probability, "probability")
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -x * np.log2(x) - (1.0 - x) * np.log2(1.0 - x)
    return np.where((x > 0.0) & (x < 1.0), entropy, 0.0)



def secret_key_fraction(qber: ArrayLike) -> FloatArray:
    """Asymptotic BB84 secret-key fraction ``r = 1 - 2h(Q)``, floored at 0.

    Shor & Preskill, PRL 85, 441 (2000) (§4.1): 0.838 at 1 %, 0 at 11.0 %.

    Parameters
    ----------
    qber : array_like
        Quantum bit error rate.

    Returns
    -------
    numpy.ndarray
        Secret bits per sifted bit, in [0, 1].
    """
    return np.maximum(1.0 - 2.0 * binary_entropy(qber), 0.0)



def clopper_pearson_upper(errors: int, trials: int, confidence: float = 0.99) -> float:
    """One-sided Clopper–Pearson upper bound on an error rate.

    The largest ``q`` with ``P(X <= errors | trials, q) >= 1 - confidence``, used
    to decide a BB84 abort conservatively (§4.3, step 4). For ``errors = 0`` it is
    ``1 - (1 - confidence)^(1/trials)``.

    Parameters
    ----------
    errors : int
        Errors seen in the disclosed sample.
    trials : int
        Sample size (>= 1).
    confidence : float
        One-sided confidence level in (0, 1).

    Returns
    -------
    float
        Upper bound on the error rate.
    """
    if trials < 1 or not 0 <= errors <= trials:
        raise ValueError(f"need 0 <= errors <= trials and trials >= 1, got {errors}/{trials}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if errors == trials:
        return 1.0
    alpha = 1.0 - confidence
    outcomes = np.arange(errors + 1)
    log_binomial = math.lgamma(trials + 1) - np.array(
        [math.lgamma(k + 1) + math.lgamma(trials - k + 1) for k in outcomes]
    )

    def cdf(q: float) -> float:
        log_terms = log_binomial + outcomes * math.log(q) + (trials - outcomes) * math.log1p(-q)
        return float(np.exp(log_terms).sum())

    low, high = errors / trials, 1.0
    for _ in range(100):
        middle = (low + high) / 2.0
        if middle in (low, high):
            break
        if cdf(middle) > alpha:
            low = middle
        else:
            high = middle
    return high
