"""Werner and Bell-diagonal states: conversion, entanglement swapping, purification.

A Werner state of fidelity ``F`` has Werner parameter ``p = (4F - 1)/3``; a
Bell-diagonal state is a vector of Pauli-error weights in the order
``(I, X, Y, Z)``, weight ``c_I`` being the fidelity with ``|Phi+>`` (§2.1-§2.3 of
``shared/research/relay_physics.md``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from relay.physics._checks import FloatArray, as_probability

# Pauli labels as two bits (x, z): I = 00, X = 10, Y = 11, Z = 01; the product
# of two Paulis is the XOR of their labels (up to a phase).
_PAULI_BITS = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
_PAULI_INDEX = {(0, 0): 0, (1, 0): 1, (1, 1): 2, (0, 1): 3}
_PAULI_PRODUCT = np.array(
    [[_PAULI_INDEX[tuple(_PAULI_BITS[i] ^ _PAULI_BITS[j])] for j in range(4)] for i in range(4)]
)


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
    fidelity = as_probability(fidelity, "fidelity")
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
    fidelity = as_probability(fidelity, "fidelity")
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
    fidelity = as_probability(fidelity, "fidelity")
    error = (1.0 - fidelity) / 3.0
    success_probability = fidelity**2 + 2.0 * fidelity * error + 5.0 * error**2
    purified = (fidelity**2 + error**2) / success_probability
    return purified, success_probability



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
