"""Waiting times, memory decoherence while waiting, and latency (§2.5, §2.7, §2.8).

Times are in s, rates in Hz, distances in km.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from relay.physics._checks import FloatArray, as_non_negative
from relay.physics.states import fidelity_from_werner_parameter, werner_parameter

SPEED_OF_LIGHT_KM_S = 299_792.458
"""Speed of light in vacuum (free-space optical links)."""

FIBRE_LIGHT_SPEED_KM_S = 2.0e5
"""Speed of light in fibre, c/n with n ~ 1.5 (SeQUeNCe ``SPEED_OF_LIGHT``; §1, §2.8)."""

CLASSICAL_BITS_PER_TELEPORT = 2
"""Classical bits Alice sends Bob per teleported qubit (§2.8, §2.9)."""


def expected_waiting_time_s(
    success_probability: ArrayLike, attempt_time_s: ArrayLike, n_links: int = 1
) -> FloatArray:
    """Expected time until ``n_links`` parallel links all hold a pair.

    ``E[T] = H_N tau / P`` with ``H_N = sum_{k=1..N} 1/k`` (§2.7; exponential
    approximation, small P). Example: 50 km fibre, P = 3.2e-2, tau = 250 µs ->
    7.8 ms for one link and 16 ms for four.

    Parameters
    ----------
    success_probability : array_like
        Per-attempt success probability ``P`` of each (identical) link.
    attempt_time_s : array_like
        Attempt cycle ``tau``, s.
    n_links : int
        Number of links needed at once.

    Returns
    -------
    numpy.ndarray
        Expected waiting time, s (inf when ``P = 0``).
    """
    if n_links < 1:
        raise ValueError(f"n_links must be >= 1, got {n_links}")
    harmonic = sum(1.0 / k for k in range(1, n_links + 1))
    success_probability = np.asarray(success_probability, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return harmonic * np.asarray(attempt_time_s, dtype=np.float64) / success_probability



EXACT_MAX_LINKS = 12
"""Paths up to this many links use the closed form (2^N - 1 terms); longer ones a quadrature."""


def expected_max_waiting_time_s(pair_rates_hz: ArrayLike) -> float:
    """Expected time until every link of a path holds a pair, for unequal rates.

    Each link delivers pairs as a Poisson process of rate ``lambda_i``, so the
    wait is the maximum of independent exponentials:
    ``E[max] = sum over non-empty subsets S of (-1)^(|S|+1) / sum_{i in S} lambda_i``
    (inclusion–exclusion). With equal rates it is ``H_N / lambda``, the §2.7
    formula with ``lambda = P / tau``. Beyond :data:`EXACT_MAX_LINKS` links the
    subsets grow too many, and the same expectation is integrated numerically:
    ``E[max] = int_0^inf (1 - prod_i (1 - exp(-lambda_i t))) dt``.

    Parameters
    ----------
    pair_rates_hz : array_like
        One rate per link, Hz (1-D, at least one link).

    Returns
    -------
    float
        Expected waiting time, s (inf if any rate is 0).
    """
    rates = np.asarray(pair_rates_hz, dtype=np.float64).ravel()
    if rates.size == 0:
        raise ValueError("need at least one link rate")
    if np.any(~(rates >= 0.0)) or np.any(np.isinf(rates)):
        raise ValueError(f"pair rates must be finite and >= 0, got {rates.tolist()}")
    if np.any(rates == 0.0):
        return math.inf
    if rates.size > EXACT_MAX_LINKS:
        return _expected_max_by_quadrature(rates)
    masks = np.arange(1, 2**rates.size)
    members = (masks[:, None] >> np.arange(rates.size)) & 1
    signs = np.where(members.sum(axis=1) % 2 == 1, 1.0, -1.0)
    return float(np.sum(signs / (members @ rates)))


def _expected_max_by_quadrature(rates: FloatArray) -> float:
    """``int_0^inf P(max > t) dt`` by the trapezoidal rule in ``s = ln t``.

    In ``s`` the integrand ``P(max > e^s) e^s`` is smooth and decays exponentially on
    both sides, where the trapezoidal rule converges geometrically; below
    ``t0 = 1e-9 / lambda_max`` every link is still waiting (``P = 1``), which
    contributes ``t0`` exactly, and beyond ``60 / lambda_min`` nothing is left.
    """
    t_low = 1e-9 / rates.max()
    s = np.arange(math.log(t_low), math.log(60.0 / rates.min()), 0.02)
    t = np.exp(s)
    with np.errstate(divide="ignore"):
        log_all_ready = np.log1p(-np.exp(-np.outer(t, rates))).sum(axis=1)
    waiting = -np.expm1(log_all_ready) * t
    integral = 0.02 * (waiting.sum() - 0.5 * (waiting[0] + waiting[-1]))
    return float(t_low + integral)


def memory_decoherence(
    fidelity: ArrayLike,
    wait_s: ArrayLike,
    coherence_time_s: ArrayLike,
    waiting_qubits: int = 2,
) -> FloatArray:
    """Fidelity of a Werner pair after its qubits wait in depolarising memories.

    ``p(t) = p(0) exp(-t / T)`` per waiting qubit, i.e.
    ``p(t) = p(0) exp(-k t / T)`` for ``k`` waiting qubits; this keeps the state
    Werner (§2.5; SeQUeNCe Bell-diagonal memories with equal Pauli rates).
    ``coherence_time_s = inf`` means a perfect memory.

    Parameters
    ----------
    fidelity : array_like
        Fidelity when the wait starts.
    wait_s : array_like
        Waiting time, s (>= 0).
    coherence_time_s : array_like
        Memory coherence time ``T``, s (> 0, may be inf).
    waiting_qubits : int
        How many qubits of the pair wait (1 or 2).

    Returns
    -------
    numpy.ndarray
        Fidelity after the wait.
    """
    if waiting_qubits not in (1, 2):
        raise ValueError(f"waiting_qubits must be 1 or 2, got {waiting_qubits}")
    wait_s = as_non_negative(wait_s, "wait_s")
    coherence_time_s = np.asarray(coherence_time_s, dtype=np.float64)
    if np.any(coherence_time_s <= 0.0):
        raise ValueError("coherence_time_s must be > 0 (use inf for a perfect memory)")
    decay = np.exp(-waiting_qubits * wait_s / coherence_time_s)
    return fidelity_from_werner_parameter(werner_parameter(fidelity) * decay)



def propagation_delay_s(
    distance_km: ArrayLike, medium: Literal["free-space", "fibre"] = "free-space"
) -> FloatArray:
    """One-way propagation delay ``d / v``.

    ``v = c`` in free space (3.34 µs/km) and ``c/n = 2e5 km/s`` in fibre
    (5 µs/km) (§2.8).

    Parameters
    ----------
    distance_km : array_like
        Path length, km.
    medium : {"free-space", "fibre"}
        Propagation medium.

    Returns
    -------
    numpy.ndarray
        Delay, s.
    """
    distance_km = as_non_negative(distance_km, "distance_km")
    if medium == "free-space":
        return distance_km / SPEED_OF_LIGHT_KM_S
    if medium == "fibre":
        return distance_km / FIBRE_LIGHT_SPEED_KM_S
    raise ValueError(f"unknown medium {medium!r}; allowed: 'free-space', 'fibre'")



def teleport_latency_s(
    n_teleports: ArrayLike,
    pair_rate_hz: ArrayLike,
    path_delay_s: ArrayLike,
    classical_rate_bps: ArrayLike = np.inf,
) -> FloatArray:
    """Time to teleport ``n`` qubits over a path.

    Bob cannot use a qubit before Alice's 2 classical bits arrive (§2.8). Pairs
    are generated at ``pair_rate_hz`` while the 2-bit messages stream at
    ``classical_rate_bps``; the two pipelines overlap, and the last message
    then travels the path once: ``max(n / R_pair, 2n / R_classical) + d/c``.
    Swap outcomes from the relays travel in parallel and arrive no later than
    the sender's bits, which cross the whole path.

    Parameters
    ----------
    n_teleports : array_like
        Number of teleported qubits (= end-to-end Bell pairs consumed).
    pair_rate_hz : array_like
        End-to-end Bell-pair rate, Hz.
    path_delay_s : array_like
        One-way classical propagation delay along the path, s.
    classical_rate_bps : array_like
        Classical data rate of the path's bottleneck, bit/s.

    Returns
    -------
    numpy.ndarray
        Latency, s.
    """
    n_teleports = as_non_negative(n_teleports, "n_teleports")
    with np.errstate(divide="ignore", invalid="ignore"):
        generation = np.where(n_teleports > 0, n_teleports / np.asarray(pair_rate_hz), 0.0)
        signalling = CLASSICAL_BITS_PER_TELEPORT * n_teleports / np.asarray(classical_rate_bps)
    return np.maximum(generation, signalling) + np.asarray(path_delay_s, dtype=np.float64)



def classical_transfer_latency_s(
    n_bytes: ArrayLike, path_delay_s: ArrayLike, classical_rate_bps: ArrayLike
) -> FloatArray:
    """Time to send ``n_bytes`` classically: ``8 n / R + d/c`` (§2.8).

    Parameters
    ----------
    n_bytes : array_like
        Payload size, bytes.
    path_delay_s : array_like
        One-way propagation delay, s.
    classical_rate_bps : array_like
        Bottleneck data rate, bit/s.

    Returns
    -------
    numpy.ndarray
        Latency, s.
    """
    n_bytes = as_non_negative(n_bytes, "n_bytes")
    return 8.0 * n_bytes / np.asarray(classical_rate_bps) + np.asarray(path_delay_s)
