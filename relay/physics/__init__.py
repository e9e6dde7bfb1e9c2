"""Closed-form link physics for the relay layer.

Pure numpy functions of plain numbers and arrays: vectorised, no state, and any
randomness comes from an explicit :class:`numpy.random.Generator`. Every formula
cites its source; section numbers (``§2.2`` ...) refer to
``shared/research/relay_physics.md``, which gives the primary references.

One module per subject; this package re-exports every public name, so callers
write ``from relay import physics`` and ``physics.swap_chain_fidelity(...)``:

- :mod:`relay.physics.states`: Werner and Bell-diagonal states, swapping, purification;
- :mod:`relay.physics.loss`: fibre and free-space transmissivity, heralding;
- :mod:`relay.physics.timing`: waiting times, memory decoherence, latency;
- :mod:`relay.physics.teleportation`: teleportation fidelity and the angle-encoded
  parameter emulation;
- :mod:`relay.physics.qkd`: BB84 QBER, secret-key fraction, abort bound;
- :mod:`relay.physics.orbits`: LEO orbit geometry.

Conventions
-----------
- A Werner state of fidelity ``F`` has Werner parameter ``p = (4F - 1)/3``.
- A Bell-diagonal state is a vector of Pauli-error weights in the order
  ``(I, X, Y, Z)``: weight ``c_I`` is the fidelity with ``|Phi+>``.
- Distances are in km, times in s, rates in Hz, losses in dB.
"""

from relay.physics.loss import (
    atmospheric_transmissivity,
    fibre_transmissivity,
    free_space_transmissivity,
    gaussian_beam_collection_efficiency,
    heralding_success_probability,
    transmissivity_from_db,
)
from relay.physics.orbits import (
    EARTH_GM_KM3_S2,
    EARTH_RADIUS_KM,
    enu_range_and_elevation,
    orbital_angular_speed,
    satellite_range_and_elevation,
    slant_range_km,
)
from relay.physics.qkd import (
    QBER_ABORT_THRESHOLD,
    bb84_qber,
    binary_entropy,
    clopper_pearson_upper,
    intercept_resend_qber,
    qber_from_fidelity,
    secret_key_fraction,
)
from relay.physics.states import (
    fidelity_from_werner_parameter,
    purify_bbpssw,
    swap_bell_diagonal,
    swap_chain_bell_diagonal,
    swap_chain_fidelity,
    swap_werner,
    werner_bell_diagonal,
    werner_parameter,
)
from relay.physics.teleportation import (
    ANGLE_SPAN,
    angle_estimator_variance,
    angles_from_parameters,
    depolarize_bloch_vector,
    emulate_angle_teleport,
    estimate_angles,
    parameters_from_angles,
    sample_angle_counts,
    shots_for_precision,
    shots_per_basis,
    teleportation_average_fidelity,
)
from relay.physics.timing import (
    CLASSICAL_BITS_PER_TELEPORT,
    FIBRE_LIGHT_SPEED_KM_S,
    SPEED_OF_LIGHT_KM_S,
    classical_transfer_latency_s,
    expected_max_waiting_time_s,
    expected_waiting_time_s,
    memory_decoherence,
    propagation_delay_s,
    teleport_latency_s,
)

__all__ = [
    "ANGLE_SPAN",
    "CLASSICAL_BITS_PER_TELEPORT",
    "EARTH_GM_KM3_S2",
    "EARTH_RADIUS_KM",
    "FIBRE_LIGHT_SPEED_KM_S",
    "QBER_ABORT_THRESHOLD",
    "SPEED_OF_LIGHT_KM_S",
    "angle_estimator_variance",
    "angles_from_parameters",
    "atmospheric_transmissivity",
    "bb84_qber",
    "binary_entropy",
    "classical_transfer_latency_s",
    "clopper_pearson_upper",
    "depolarize_bloch_vector",
    "emulate_angle_teleport",
    "estimate_angles",
    "expected_max_waiting_time_s",
    "expected_waiting_time_s",
    "fibre_transmissivity",
    "fidelity_from_werner_parameter",
    "free_space_transmissivity",
    "gaussian_beam_collection_efficiency",
    "heralding_success_probability",
    "intercept_resend_qber",
    "memory_decoherence",
    "orbital_angular_speed",
    "parameters_from_angles",
    "propagation_delay_s",
    "purify_bbpssw",
    "qber_from_fidelity",
    "sample_angle_counts",
    "enu_range_and_elevation",
    "satellite_range_and_elevation",
    "secret_key_fraction",
    "shots_for_precision",
    "shots_per_basis",
    "slant_range_km",
    "swap_bell_diagonal",
    "swap_chain_bell_diagonal",
    "swap_chain_fidelity",
    "swap_werner",
    "teleport_latency_s",
    "teleportation_average_fidelity",
    "transmissivity_from_db",
    "werner_bell_diagonal",
    "werner_parameter",
]
