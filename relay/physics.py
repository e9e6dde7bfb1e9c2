"""Closed-form link physics for the relay layer.

Pure numpy functions of plain numbers and arrays: vectorised, no state, and any
randomness comes from an explicit :class:`numpy.random.Generator`. Every formula
cites its source; section numbers (``§2.2`` ...) refer to
``shared/research/relay_physics.md``, which gives the primary references.

Conventions
-----------
- A Werner state of fidelity ``F`` has Werner parameter ``p = (4F - 1)/3``.
- A Bell-diagonal state is a vector of Pauli-error weights in the order
  ``(I, X, Y, Z)``: weight ``c_I`` is the fidelity with ``|Phi+>``.
- Distances are in km, times in s, rates in Hz, losses in dB.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

SPEED_OF_LIGHT_KM_S = 299_792.458
"""Speed of light in vacuum (free-space optical links)."""

FIBRE_LIGHT_SPEED_KM_S = 2.0e5
"""Speed of light in fibre, c/n with n ~ 1.5 (SeQUeNCe ``SPEED_OF_LIGHT``; §1, §2.8)."""

EARTH_RADIUS_KM = 6371.0
"""Mean Earth radius (§5.1)."""

EARTH_GM_KM3_S2 = 398_600.4418
"""Earth's gravitational parameter mu (§5.1)."""

QBER_ABORT_THRESHOLD = 0.11
"""Asymptotic BB84 abort threshold: 1 - 2h(Q) crosses zero at Q = 11.0 % (§4.1)."""

CLASSICAL_BITS_PER_TELEPORT = 2
"""Classical bits Alice sends Bob per teleported qubit (§2.8, §2.9)."""

ANGLE_SPAN = math.pi
"""Span Phi of the meridian angle encoding: parameters map onto [0, pi] (§3.2)."""

# Pauli labels as two bits (x, z): I = 00, X = 10, Y = 11, Z = 01; the product
# of two Paulis is the XOR of their labels (up to a phase).
_PAULI_BITS = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
_PAULI_INDEX = {(0, 0): 0, (1, 0): 1, (1, 1): 2, (0, 1): 3}
_PAULI_PRODUCT = np.array(
    [[_PAULI_INDEX[tuple(_PAULI_BITS[i] ^ _PAULI_BITS[j])] for j in range(4)] for i in range(4)]
)


# --------------------------------------------------------------------------------------
# Werner and Bell-diagonal states
# --------------------------------------------------------------------------------------


def werner_parameter(fidelity: ArrayLike) -> FloatArray:
    """Werner parameter of a Werner state with the given fidelity.

    ``p = (4F - 1)/3`` (§2.1; Horodecki³, PRA 60, 1888 (1999)).

    Parameters
    ----------
    fidelity : array_like
        Fidelity ``F`` with ``|Phi+>``, in [0, 1].

    Returns
    -------
    numpy.ndarray
        Werner parameter ``p`` in [-1/3, 1].
    """
    fidelity = _as_probability(fidelity, "fidelity")
    return (4.0 * fidelity - 1.0) / 3.0


def fidelity_from_werner_parameter(werner_p: ArrayLike) -> FloatArray:
    """Fidelity of a Werner state with parameter ``p``: ``F = (1 + 3p)/4`` (§2.1).

    Parameters
    ----------
    werner_p : array_like
        Werner parameter in [-1/3, 1].

    Returns
    -------
    numpy.ndarray
        Fidelity ``F``.
    """
    return (1.0 + 3.0 * np.asarray(werner_p, dtype=np.float64)) / 4.0


def werner_bell_diagonal(fidelity: ArrayLike) -> FloatArray:
    """Bell-diagonal coefficients ``(F, e, e, e)`` of a Werner state, ``e = (1-F)/3`` (§2.1).

    Parameters
    ----------
    fidelity : array_like
        Werner fidelity, any shape.

    Returns
    -------
    numpy.ndarray
        Shape ``fidelity.shape + (4,)``, Pauli weights ordered ``(I, X, Y, Z)``.
    """
    fidelity = _as_probability(fidelity, "fidelity")
    error = (1.0 - fidelity) / 3.0
    return np.stack([fidelity, error, error, error], axis=-1)


def swap_bell_diagonal(
    first: ArrayLike,
    second: ArrayLike,
    *,
    gate_fidelity: float = 1.0,
    measurement_fidelity: float = 1.0,
) -> FloatArray:
    """Bell-diagonal state after entanglement swapping of two Bell-diagonal pairs.

    Perfect Bell-state measurement composes the Pauli errors: ``c_k = sum over
    i XOR j = k of a_i b_j`` (§2.2). Measurement errors (each outcome bit correct
    with probability ``m``) compose one more Pauli error with weights
    ``(m², m(1-m), (1-m)², m(1-m))``, and an imperfect two-qubit gate depolarises
    with probability ``1 - g``; with Werner inputs this reproduces the
    Briegel–Dür–Cirac–Zoller result ``p = g (4m² - 1)/3 p1 p2`` (PRL 81, 5932
    (1998); SeQUeNCe 1.x Bell-diagonal swapping).

    Parameters
    ----------
    first, second : array_like
        Bell-diagonal coefficients, shape ``(..., 4)`` in ``(I, X, Y, Z)`` order.
    gate_fidelity : float
        Two-qubit gate reliability ``g`` in [0, 1].
    measurement_fidelity : float
        Single-qubit measurement fidelity ``m`` in [0, 1].

    Returns
    -------
    numpy.ndarray
        Bell-diagonal coefficients of the swapped pair, shape ``(..., 4)``.
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    swapped = _compose_pauli_errors(first, second)
    m = float(measurement_fidelity)
    g = float(gate_fidelity)
    if not (0.0 <= m <= 1.0 and 0.0 <= g <= 1.0):
        raise ValueError(f"gate_fidelity ({g}) and measurement_fidelity ({m}) must lie in [0, 1]")
    if m < 1.0:
        measurement_errors = np.array([m * m, m * (1 - m), (1 - m) ** 2, m * (1 - m)])
        swapped = _compose_pauli_errors(swapped, measurement_errors)
    return g * swapped + (1.0 - g) / 4.0


def swap_werner(
    first_fidelity: ArrayLike,
    second_fidelity: ArrayLike,
    *,
    gate_fidelity: float = 1.0,
    measurement_fidelity: float = 1.0,
) -> FloatArray:
    """Fidelity after swapping two Werner pairs.

    ``p = g (4m² - 1)/3 · p1 p2``; with a perfect Bell-state measurement
    ``F = F1 F2 + (1 - F1)(1 - F2)/3``, e.g. 0.95 and 0.90 give 0.85667 (§2.2).

    Parameters
    ----------
    first_fidelity, second_fidelity : array_like
        Werner fidelities of the two pairs (broadcast together).
    gate_fidelity, measurement_fidelity : float
        Imperfect-swap parameters ``g`` and ``m`` in [0, 1].

    Returns
    -------
    numpy.ndarray
        Fidelity of the swapped (twirled) pair.
    """
    end_to_end_p = (
        werner_parameter(first_fidelity)
        * werner_parameter(second_fidelity)
        * _swap_factor(gate_fidelity, measurement_fidelity)
    )
    return fidelity_from_werner_parameter(end_to_end_p)


def swap_chain_fidelity(
    hop_fidelities: ArrayLike,
    *,
    axis: int = -1,
    gate_fidelity: float = 1.0,
    measurement_fidelity: float = 1.0,
) -> FloatArray:
    """End-to-end fidelity of a repeater chain of Werner pairs (N links, N - 1 swaps).

    ``p_e2e = (g (4m² - 1)/3)^(N-1) · prod_i p_i`` and ``F = (1 + 3 p_e2e)/4``
    (§2.2; Briegel et al., PRL 81, 5932 (1998)). Four links at 0.95 give 0.819.

    Parameters
    ----------
    hop_fidelities : array_like
        Werner fidelities of the elementary links along ``axis``.
    axis : int
        Axis that runs along the chain.
    gate_fidelity, measurement_fidelity : float
        Imperfect-swap parameters ``g`` and ``m`` in [0, 1].

    Returns
    -------
    numpy.ndarray
        End-to-end fidelity, ``hop_fidelities`` reduced over ``axis``.
    """
    hop_p = werner_parameter(hop_fidelities)
    n_links = hop_p.shape[axis]
    if n_links == 0:
        raise ValueError("a chain needs at least one link")
    swap_factor = _swap_factor(gate_fidelity, measurement_fidelity)
    end_to_end_p = np.prod(hop_p, axis=axis) * swap_factor ** (n_links - 1)
    return fidelity_from_werner_parameter(end_to_end_p)


def swap_chain_bell_diagonal(
    hop_states: ArrayLike,
    *,
    gate_fidelity: float = 1.0,
    measurement_fidelity: float = 1.0,
) -> FloatArray:
    """Bell-diagonal state at the ends of a chain of Bell-diagonal pairs.

    Swaps the links left to right with :func:`swap_bell_diagonal` (§2.2).

    Parameters
    ----------
    hop_states : array_like
        Shape ``(..., N, 4)``: N elementary links, Pauli weights ``(I, X, Y, Z)``.
    gate_fidelity, measurement_fidelity : float
        Imperfect-swap parameters ``g`` and ``m`` in [0, 1].

    Returns
    -------
    numpy.ndarray
        Shape ``(..., 4)``.
    """
    hop_states = np.asarray(hop_states, dtype=np.float64)
    if hop_states.ndim < 2 or hop_states.shape[-1] != 4 or hop_states.shape[-2] == 0:
        raise ValueError(f"hop_states must have shape (..., N>=1, 4), got {hop_states.shape}")
    state = hop_states[..., 0, :]
    for hop in range(1, hop_states.shape[-2]):
        state = swap_bell_diagonal(
            state,
            hop_states[..., hop, :],
            gate_fidelity=gate_fidelity,
            measurement_fidelity=measurement_fidelity,
        )
    return state


def purify_bbpssw(fidelity: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """One BBPSSW recurrence purification step on two Werner pairs.

    With ``e = (1 - F)/3``: ``P_s = F² + 2Fe + 5e²`` and ``F' = (F² + e²)/P_s``
    (§2.3; Bennett et al., PRL 76, 722 (1996)). Example: 0.80 -> 0.838 with
    ``P_s = 0.769``. Costs two pairs in, one out on success, and 2 classical bits.

    Parameters
    ----------
    fidelity : array_like
        Werner fidelity of each of the two input pairs.

    Returns
    -------
    tuple of numpy.ndarray
        ``(purified_fidelity, success_probability)``; the output is twirled back
        to a Werner state.
    """
    fidelity = _as_probability(fidelity, "fidelity")
    error = (1.0 - fidelity) / 3.0
    success_probability = fidelity**2 + 2.0 * fidelity * error + 5.0 * error**2
    purified = (fidelity**2 + error**2) / success_probability
    return purified, success_probability


# --------------------------------------------------------------------------------------
# Loss, pair generation and memory
# --------------------------------------------------------------------------------------


def transmissivity_from_db(loss_db: ArrayLike) -> FloatArray:
    """Transmissivity of a loss given in dB: ``eta = 10^(-dB/10)``."""
    return 10.0 ** (-np.asarray(loss_db, dtype=np.float64) / 10.0)


def fibre_transmissivity(
    length_km: ArrayLike, attenuation_db_per_km: ArrayLike = 0.2
) -> FloatArray:
    """Fibre transmissivity ``eta = 10^(-alpha L / 10)``.

    Default ``alpha = 0.2 dB/km`` at 1550 nm; 50 km -> 0.1 (§2.6; SeQUeNCe
    quantum channel).

    Parameters
    ----------
    length_km : array_like
        Fibre length, km (>= 0).
    attenuation_db_per_km : array_like
        Attenuation ``alpha``.

    Returns
    -------
    numpy.ndarray
        Transmissivity in (0, 1].
    """
    length_km = _as_non_negative(length_km, "length_km")
    return transmissivity_from_db(length_km * np.asarray(attenuation_db_per_km))


def gaussian_beam_collection_efficiency(
    distance_km: ArrayLike,
    divergence_rad: ArrayLike,
    aperture_radius_m: ArrayLike,
    beam_waist_m: ArrayLike = 0.0,
) -> FloatArray:
    """Fraction of a Gaussian beam caught by a circular receiver aperture.

    ``w(L) = sqrt(w0² + (theta L)²)`` and ``eta_geo = 1 - exp(-2a²/w(L)²)``
    (§2.6; same form as the NetSquid free-space loss model). Example: 5 km,
    100 µrad, a = 10 cm -> 11.1 dB (§5.2).

    Parameters
    ----------
    distance_km : array_like
        Link distance ``L``, km.
    divergence_rad : array_like
        1/e² half-angle divergence ``theta``, rad.
    aperture_radius_m : array_like
        Receiver aperture radius ``a``, m.
    beam_waist_m : array_like
        Beam waist ``w0`` at the transmitter, m.

    Returns
    -------
    numpy.ndarray
        Geometric efficiency ``eta_geo`` in [0, 1].
    """
    distance_m = _as_non_negative(distance_km, "distance_km") * 1e3
    beam_radius_sq = np.asarray(beam_waist_m) ** 2 + (np.asarray(divergence_rad) * distance_m) ** 2
    with np.errstate(divide="ignore"):
        ratio = 2.0 * np.asarray(aperture_radius_m, dtype=np.float64) ** 2 / beam_radius_sq
    return -np.expm1(-ratio)


def atmospheric_transmissivity(
    elevation_deg: ArrayLike, zenith_transmissivity: ArrayLike
) -> FloatArray:
    """Slant-path atmospheric transmissivity ``eta_zen^(1/sin(elevation))``.

    Bourgoin et al., NJP 15, 023006 (2013) (§2.6): ``eta_zen = 0.8`` gives
    0.97 dB at zenith and 1.94 dB at 30°.

    Parameters
    ----------
    elevation_deg : array_like
        Elevation of the link above the horizon, degrees (> 0 for any light).
    zenith_transmissivity : array_like
        Transmissivity straight up, ``eta_zen``.

    Returns
    -------
    numpy.ndarray
        Transmissivity in [0, 1]; 0 at or below the horizon unless ``eta_zen = 1``.
    """
    zenith = np.asarray(zenith_transmissivity, dtype=np.float64)
    sin_elevation = np.sin(np.radians(np.asarray(elevation_deg, dtype=np.float64)))
    with np.errstate(divide="ignore", invalid="ignore"):
        airmass = np.where(sin_elevation > 0.0, 1.0 / sin_elevation, np.inf)
        eta = np.where(zenith >= 1.0, 1.0, zenith**airmass)
    return np.asarray(eta, dtype=np.float64)


def free_space_transmissivity(
    distance_km: ArrayLike,
    divergence_rad: ArrayLike,
    aperture_radius_m: ArrayLike,
    *,
    beam_waist_m: ArrayLike = 0.0,
    elevation_deg: ArrayLike = 90.0,
    zenith_transmissivity: ArrayLike = 1.0,
    atmosphere_db_per_km: ArrayLike = 0.0,
    receiver_efficiency: ArrayLike = 1.0,
    extra_loss_db: ArrayLike = 0.0,
) -> FloatArray:
    """Total transmissivity of a free-space optical link.

    ``eta = eta_geo · eta_atm · eta_rx · eta_extra`` (§2.6): Gaussian-beam
    capture, slant atmosphere ``eta_zen^(1/sin el)`` and/or a horizontal
    ``dB/km`` term (Kim/Kruse visibility model; 0.42 dB/km at V = 23 km),
    receiver optics times detector efficiency, and a fixed margin (pointing,
    turbulence) in dB.

    Parameters
    ----------
    distance_km, divergence_rad, aperture_radius_m, beam_waist_m : array_like
        See :func:`gaussian_beam_collection_efficiency`.
    elevation_deg, zenith_transmissivity : array_like
        See :func:`atmospheric_transmissivity`.
    atmosphere_db_per_km : array_like
        Horizontal atmospheric loss applied over the whole distance.
    receiver_efficiency : array_like
        ``eta_rx`` in [0, 1].
    extra_loss_db : array_like
        Fixed extra loss (pointing, turbulence margin), dB.

    Returns
    -------
    numpy.ndarray
        Transmissivity in [0, 1].
    """
    geometric = gaussian_beam_collection_efficiency(
        distance_km, divergence_rad, aperture_radius_m, beam_waist_m
    )
    slant = atmospheric_transmissivity(elevation_deg, zenith_transmissivity)
    horizontal = transmissivity_from_db(np.asarray(atmosphere_db_per_km) * np.asarray(distance_km))
    return (
        geometric
        * slant
        * horizontal
        * np.asarray(receiver_efficiency, dtype=np.float64)
        * transmissivity_from_db(extra_loss_db)
    )


def heralding_success_probability(
    transmissivity: ArrayLike, scheme: Literal["direct", "midpoint"] = "direct"
) -> FloatArray:
    """Probability that one entanglement-generation attempt is heralded.

    ``direct`` (source at one end, memory at the other): ``P = eta``;
    ``midpoint`` (memory-memory with a double-click Bell measurement in the
    middle, Barrett–Kok): ``P = eta_A eta_B / 2 = eta/2`` with ``eta`` the
    product of the two arms (§2.7). Loss is heralded: it costs time, not fidelity.

    Parameters
    ----------
    transmissivity : array_like
        Total link transmissivity including detector efficiency.
    scheme : {"direct", "midpoint"}
        Generation scheme.

    Returns
    -------
    numpy.ndarray
        Success probability per attempt.
    """
    eta = _as_probability(transmissivity, "transmissivity")
    if scheme == "direct":
        return eta
    if scheme == "midpoint":
        return eta / 2.0
    raise ValueError(f"unknown heralding scheme {scheme!r}; allowed: 'direct', 'midpoint'")


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


def expected_max_waiting_time_s(pair_rates_hz: ArrayLike) -> float:
    """Expected time until every link of a path holds a pair, for unequal rates.

    Each link delivers pairs as a Poisson process of rate ``lambda_i``, so the
    wait is the maximum of independent exponentials:
    ``E[max] = sum over non-empty subsets S of (-1)^(|S|+1) / sum_{i in S} lambda_i``
    (inclusion–exclusion). With equal rates it is ``H_N / lambda``, the §2.7
    formula with ``lambda = P / tau``.

    Parameters
    ----------
    pair_rates_hz : array_like
        One rate per link, Hz (1-D, at most 20 links).

    Returns
    -------
    float
        Expected waiting time, s (inf if any rate is 0).
    """
    rates = np.asarray(pair_rates_hz, dtype=np.float64).ravel()
    if rates.size == 0 or rates.size > 20:
        raise ValueError(f"need between 1 and 20 link rates, got {rates.size}")
    if np.any(rates < 0.0):
        raise ValueError(f"pair rates must be >= 0, got {rates.tolist()}")
    if np.any(rates == 0.0):
        return math.inf
    masks = np.arange(1, 2**rates.size)
    members = (masks[:, None] >> np.arange(rates.size)) & 1
    signs = np.where(members.sum(axis=1) % 2 == 1, 1.0, -1.0)
    return float(np.sum(signs / (members @ rates)))


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
    wait_s = _as_non_negative(wait_s, "wait_s")
    coherence_time_s = np.asarray(coherence_time_s, dtype=np.float64)
    if np.any(coherence_time_s <= 0.0):
        raise ValueError("coherence_time_s must be > 0 (use inf for a perfect memory)")
    decay = np.exp(-waiting_qubits * wait_s / coherence_time_s)
    return fidelity_from_werner_parameter(werner_parameter(fidelity) * decay)


# --------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------


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
    distance_km = _as_non_negative(distance_km, "distance_km")
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
    n_teleports = _as_non_negative(n_teleports, "n_teleports")
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
    n_bytes = _as_non_negative(n_bytes, "n_bytes")
    return 8.0 * n_bytes / np.asarray(classical_rate_bps) + np.asarray(path_delay_s)


# --------------------------------------------------------------------------------------
# Teleportation and the angle-encoded parameter emulation
# --------------------------------------------------------------------------------------


def teleportation_average_fidelity(fidelity: ArrayLike) -> FloatArray:
    """Average fidelity of teleporting one qubit through a Werner resource.

    ``F_tel = (1 + p)/2 = (2F + 1)/3``; the classical limit is 2/3 (§2.4;
    Horodecki³, PRA 60, 1888 (1999)).

    Parameters
    ----------
    fidelity : array_like
        Resource (end-to-end pair) fidelity ``F``.

    Returns
    -------
    numpy.ndarray
        Average teleportation fidelity.
    """
    return (2.0 * _as_probability(fidelity, "fidelity") + 1.0) / 3.0


def depolarize_bloch_vector(bloch: ArrayLike, fidelity: ArrayLike) -> FloatArray:
    """Bloch vector after teleportation through a Werner resource.

    The teleported qubit sees the depolarising channel
    ``rho -> p rho + (1 - p) I/2``, so ``r -> p r`` (§2.4).

    Parameters
    ----------
    bloch : array_like
        Bloch vectors, shape ``(..., 3)``.
    fidelity : array_like
        Resource fidelity, broadcast against ``bloch[..., 0]``.

    Returns
    -------
    numpy.ndarray
        Shrunk Bloch vectors.
    """
    return np.asarray(bloch, dtype=np.float64) * werner_parameter(fidelity)[..., None]


def angles_from_parameters(values: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> FloatArray:
    """Map parameters in ``[lower, upper]`` onto meridian angles in ``[0, pi]``.

    ``phi = Phi (w - w_min)/R`` with ``Phi = pi`` (§3.2). A zero range maps
    every value to ``pi/2`` and decodes back to ``lower`` exactly.

    Parameters
    ----------
    values : array_like
        Parameters.
    lower, upper : array_like
        Range ends (sent classically as public metadata).

    Returns
    -------
    numpy.ndarray
        Angles, radians.
    """
    values = np.asarray(values, dtype=np.float64)
    lower = np.asarray(lower, dtype=np.float64)
    span = np.asarray(upper, dtype=np.float64) - lower
    safe_span = np.where(span > 0.0, span, 1.0)
    return np.where(span > 0.0, ANGLE_SPAN * (values - lower) / safe_span, ANGLE_SPAN / 2)


def parameters_from_angles(angles: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> FloatArray:
    """Invert :func:`angles_from_parameters`: ``w = w_min + R phi / Phi`` (§3.2)."""
    lower = np.asarray(lower, dtype=np.float64)
    span = np.asarray(upper, dtype=np.float64) - lower
    return lower + span * np.asarray(angles, dtype=np.float64) / ANGLE_SPAN


def sample_angle_counts(
    angles: ArrayLike, fidelity: float, shots: int, rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Sample Z and X measurement counts of teleported meridian states.

    The state ``cos(phi/2)|0> + sin(phi/2)|1>`` has Bloch vector
    ``(sin phi, 0, cos phi)``; teleportation shrinks it by ``p`` (§2.4). Half of
    the ``shots`` copies are measured in Z, half in X, sampled exactly (§3.2):
    ``n_Z ~ Binomial(S/2, (1 + p cos phi)/2)``,
    ``n_X ~ Binomial(S/2, (1 + p sin phi)/2)``.

    Parameters
    ----------
    angles : array_like
        Encoded angles, any shape.
    fidelity : float
        End-to-end resource fidelity ``F``.
    shots : int
        Copies (teleports) per angle, even and >= 2.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    tuple of numpy.ndarray
        ``(n_z, n_x)``: counts of outcome +1, same shape as ``angles``.
    """
    per_basis = shots_per_basis(shots)
    angles = np.asarray(angles, dtype=np.float64)
    werner_p = float(werner_parameter(fidelity))
    n_z = rng.binomial(per_basis, (1.0 + werner_p * np.cos(angles)) / 2.0)
    n_x = rng.binomial(per_basis, (1.0 + werner_p * np.sin(angles)) / 2.0)
    return np.asarray(n_z, dtype=np.int64), np.asarray(n_x, dtype=np.int64)


def estimate_angles(n_z: ArrayLike, n_x: ArrayLike, shots: int) -> FloatArray:
    """Unbiased atan2 estimate of the encoded angles from measurement counts.

    ``z = 2 n_Z/(S/2) - 1``, ``x = 2 n_X/(S/2) - 1``, ``phi = atan2(x, z)``
    (§3.2). Depolarising noise shrinks both components equally, so the
    estimator needs no knowledge of ``p`` and is unbiased to first order; the
    result is unwrapped onto ``[-pi/2, 3pi/2)``, the circle centred on the
    encoding interval ``[0, pi]``, so estimates near either end are not folded.

    Parameters
    ----------
    n_z, n_x : array_like
        Counts of outcome +1 in Z and in X.
    shots : int
        Total shots per angle (as given to :func:`sample_angle_counts`).

    Returns
    -------
    numpy.ndarray
        Estimated angles, radians.
    """
    per_basis = shots_per_basis(shots)
    z_hat = 2.0 * np.asarray(n_z, dtype=np.float64) / per_basis - 1.0
    x_hat = 2.0 * np.asarray(n_x, dtype=np.float64) / per_basis - 1.0
    phi_hat = np.arctan2(x_hat, z_hat)
    lowest = ANGLE_SPAN / 2.0 - math.pi
    return np.where(phi_hat < lowest, phi_hat + 2.0 * math.pi, phi_hat)


def emulate_angle_teleport(
    angles: ArrayLike, fidelity: float, shots: int, rng: np.random.Generator
) -> FloatArray:
    """Teleport angle-encoded states ``shots`` times each and estimate the angles.

    :func:`sample_angle_counts` followed by :func:`estimate_angles` (§3.2).
    This is an emulation of an analogue quantum channel, not a bandwidth
    channel: every shot consumes one end-to-end Bell pair and 2 classical bits.

    Parameters
    ----------
    angles : array_like
        Encoded angles in ``[0, pi]``.
    fidelity : float
        End-to-end resource fidelity.
    shots : int
        Copies per angle (even, >= 2).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        Estimated angles, same shape as ``angles``.
    """
    n_z, n_x = sample_angle_counts(angles, fidelity, shots, rng)
    return estimate_angles(n_z, n_x, shots)


def angle_estimator_variance(angles: ArrayLike, fidelity: ArrayLike, shots: int) -> FloatArray:
    """Delta-method variance of the atan2 angle estimator.

    ``Var(phi_hat) = 2 (1 - (p²/2) sin²(2 phi)) / (p² S) <= 2/(p² S)`` (§3.2;
    Monte-Carlo check at p = 0.6, S = 1000: 5.05e-3 measured, 5.02e-3
    predicted). For the parameters, multiply by ``(R / pi)²``.

    Parameters
    ----------
    angles : array_like
        Encoded angles.
    fidelity : array_like
        Resource fidelity (> 1/4 so that ``p > 0``).
    shots : int
        Total shots per angle.

    Returns
    -------
    numpy.ndarray
        Variance, rad².
    """
    shots_per_basis(shots)
    werner_p = werner_parameter(fidelity)
    if np.any(werner_p <= 0.0):
        raise ValueError("the angle estimator needs fidelity > 1/4 (Werner parameter > 0)")
    angles = np.asarray(angles, dtype=np.float64)
    return 2.0 * (1.0 - werner_p**2 / 2.0 * np.sin(2.0 * angles) ** 2) / (werner_p**2 * shots)


def shots_per_basis(shots: int) -> int:
    """Shots measured in each of Z and X: half of ``shots``, which must be even and >= 2 (§3.2).

    Raises
    ------
    TypeError
        ``shots`` is not an int.
    ValueError
        ``shots`` is odd or smaller than 2.
    """
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)):
        raise TypeError(f"shots must be an int, got {type(shots).__name__}")
    if shots < 2 or shots % 2:
        raise ValueError(f"shots must be even and >= 2 (half in Z, half in X), got {shots}")
    return int(shots) // 2


def shots_for_precision(relative_std: ArrayLike, fidelity: ArrayLike) -> FloatArray:
    """Bell pairs per parameter for a target precision ``sigma_w / R``.

    ``S = 2 / (p² Phi² (sigma_w/R)²)`` with ``Phi = pi`` (§3.2): about 2,300
    pairs for 1 % of the range at F = 0.95.

    Parameters
    ----------
    relative_std : array_like
        Target standard deviation as a fraction of the parameter range.
    fidelity : array_like
        Resource fidelity.

    Returns
    -------
    numpy.ndarray
        Shots (worst case over angles), not rounded.
    """
    werner_p = werner_parameter(fidelity)
    relative_std = np.asarray(relative_std, dtype=np.float64)
    return 2.0 / (werner_p**2 * ANGLE_SPAN**2 * relative_std**2)


# --------------------------------------------------------------------------------------
# QKD
# --------------------------------------------------------------------------------------


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
    return 2.0 * (1.0 - _as_probability(fidelity, "fidelity")) / 3.0


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
    qber = _as_probability(qber, "qber")
    fraction = _as_probability(eavesdropper_fraction, "eavesdropper_fraction")
    return qber + fraction * (0.25 - qber / 2.0)


def bb84_qber(fidelity: ArrayLike, eavesdropper_fraction: ArrayLike = 0.0) -> FloatArray:
    """QBER of a relay path of the given fidelity, with an optional eavesdropper.

    :func:`qber_from_fidelity` then :func:`intercept_resend_qber` (§4.1, §4.2).
    """
    return intercept_resend_qber(qber_from_fidelity(fidelity), eavesdropper_fraction)


def binary_entropy(probability: ArrayLike) -> FloatArray:
    """Binary entropy ``h(x) = -x log2 x - (1-x) log2(1-x)``, with ``h(0) = h(1) = 0`` (§4.1)."""
    x = _as_probability(probability, "probability")
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


# --------------------------------------------------------------------------------------
# Orbit geometry
# --------------------------------------------------------------------------------------


def orbital_angular_speed(altitude_km: ArrayLike) -> FloatArray:
    """Angular speed of a circular orbit, ``sqrt(mu / r³)`` rad/s (§5.1; 550 km -> 95.5 min)."""
    radius = EARTH_RADIUS_KM + _as_non_negative(altitude_km, "altitude_km")
    return np.sqrt(EARTH_GM_KM3_S2 / radius**3)


def slant_range_km(elevation_deg: ArrayLike, altitude_km: ArrayLike) -> FloatArray:
    """Ground-to-satellite slant range at a given elevation.

    ``d(el) = sqrt((R_E + h)² - (R_E cos el)²) - R_E sin el`` (§5.1): 550 km at
    30° gives 993 km.
    """
    elevation = np.radians(np.asarray(elevation_deg, dtype=np.float64))
    radius = EARTH_RADIUS_KM + _as_non_negative(altitude_km, "altitude_km")
    return np.sqrt(
        radius**2 - (EARTH_RADIUS_KM * np.cos(elevation)) ** 2
    ) - EARTH_RADIUS_KM * np.sin(elevation)


def satellite_range_and_elevation(
    central_angle_rad: ArrayLike, observer_altitude_km: ArrayLike, satellite_altitude_km: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Range and elevation of a satellite seen from an observer on or above the ground.

    With ``r1 = R_E + h_obs``, ``r2 = R_E + h_sat`` and central angle ``gamma``:
    ``d = sqrt(r1² + r2² - 2 r1 r2 cos gamma)`` and
    ``sin(el) = (r2 cos gamma - r1) / d`` (law of cosines; reduces to the §5.1
    slant-range formula for ``h_obs = 0``).

    Parameters
    ----------
    central_angle_rad : array_like
        Earth-centred angle between observer and sub-satellite point.
    observer_altitude_km, satellite_altitude_km : array_like
        Altitudes above the mean Earth radius.

    Returns
    -------
    tuple of numpy.ndarray
        ``(range_km, elevation_deg)``.
    """
    gamma = np.asarray(central_angle_rad, dtype=np.float64)
    r_observer = EARTH_RADIUS_KM + np.asarray(observer_altitude_km, dtype=np.float64)
    r_satellite = EARTH_RADIUS_KM + np.asarray(satellite_altitude_km, dtype=np.float64)
    distance = np.sqrt(
        r_observer**2 + r_satellite**2 - 2.0 * r_observer * r_satellite * np.cos(gamma)
    )
    sin_elevation = (r_satellite * np.cos(gamma) - r_observer) / distance
    return distance, np.degrees(np.arcsin(np.clip(sin_elevation, -1.0, 1.0)))


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _compose_pauli_errors(first: FloatArray, second: FloatArray) -> FloatArray:
    outer = first[..., :, None] * second[..., None, :]
    result = np.zeros(np.broadcast_shapes(first.shape, second.shape), dtype=np.float64)
    for label in range(4):
        result[..., label] = outer[..., label == _PAULI_PRODUCT].sum(axis=-1)
    return result


def _swap_factor(gate_fidelity: float, measurement_fidelity: float) -> float:
    g, m = float(gate_fidelity), float(measurement_fidelity)
    if not (0.0 <= g <= 1.0 and 0.0 <= m <= 1.0):
        raise ValueError(f"gate_fidelity ({g}) and measurement_fidelity ({m}) must lie in [0, 1]")
    return g * (4.0 * m * m - 1.0) / 3.0


def _as_probability(value: ArrayLike, name: str) -> FloatArray:
    array = np.asarray(value, dtype=np.float64)
    bad = ~((array >= 0.0) & (array <= 1.0))
    if np.any(bad):
        raise ValueError(f"{name} must lie in [0, 1], got {array[bad].flat[0]!r}")
    return array


def _as_non_negative(value: ArrayLike, name: str) -> FloatArray:
    array = np.asarray(value, dtype=np.float64)
    bad = ~(array >= 0.0)
    if np.any(bad):
        raise ValueError(f"{name} must be >= 0, got {array[bad].flat[0]!r}")
    return array
