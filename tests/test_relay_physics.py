"""Closed-form relay physics against known values, density-matrix references and Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relay import physics
from relay.channels.teleport import MIN_SHOTS

# --------------------------------------------------------------------------------------
# Density-matrix reference (small, independent of the closed forms under test)
# --------------------------------------------------------------------------------------

_I = np.eye(2)
_X = np.array([[0, 1], [1, 0]], dtype=complex)
_Z = np.diag([1.0, -1.0]).astype(complex)
_PHI_PLUS = np.array([1, 0, 0, 1], dtype=complex) / math.sqrt(2)
# Bell states as (I ⊗ P)|Phi+>, with the Pauli P that corrects the far qubit.
_BELL_CORRECTIONS = [_I, _X, _Z, _X @ _Z]
_BELL_STATES = [np.kron(_I, pauli) @ _PHI_PLUS for pauli in _BELL_CORRECTIONS]


def _werner(fidelity: float) -> np.ndarray:
    projector = np.outer(_PHI_PLUS, _PHI_PLUS.conj())
    return fidelity * projector + (1 - fidelity) / 3 * (np.eye(4) - projector)


def _kron(*operators: np.ndarray) -> np.ndarray:
    result = np.eye(1)
    for operator in operators:
        result = np.kron(result, operator)
    return result


def _bell_measure_and_correct(rho: np.ndarray, n_qubits: int, first: int) -> np.ndarray:
    """Bell-measure qubits (first, first+1), Pauli-correct the last qubit, trace out the pair."""
    dimension_before = 2**first
    dimension_after = 2 ** (n_qubits - first - 2)
    output = 0
    for bell, correction in zip(_BELL_STATES, _BELL_CORRECTIONS, strict=True):
        bra = np.kron(
            np.kron(np.eye(dimension_before), bell.conj()[None, :]), np.eye(dimension_after)
        )
        projected = bra @ rho @ bra.conj().T
        fix = _kron(np.eye(projected.shape[0] // 2), correction.conj().T)
        output = output + fix @ projected @ fix.conj().T
    return output


def _teleported_state(psi: np.ndarray, resource_fidelity: float) -> np.ndarray:
    rho = np.kron(np.outer(psi, psi.conj()), _werner(resource_fidelity))
    return _bell_measure_and_correct(rho, 3, 0)


# --------------------------------------------------------------------------------------
# Werner and Bell-diagonal algebra
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fidelity", [0.25, 0.5, 0.7, 0.95, 1.0])
def test_werner_parameter_round_trips(fidelity):
    werner_p = physics.werner_parameter(fidelity)
    assert werner_p == pytest.approx((4 * fidelity - 1) / 3)
    assert physics.fidelity_from_werner_parameter(werner_p) == pytest.approx(fidelity)


def test_werner_parameter_rejects_fidelity_outside_unit_interval():
    with pytest.raises(ValueError, match="fidelity"):
        physics.werner_parameter(1.2)


def test_swap_of_095_and_090_gives_085667():
    assert physics.swap_werner(0.95, 0.90) == pytest.approx(0.856667, abs=1e-6)


@pytest.mark.parametrize(
    ("hops", "expected"), [([0.95] * 4, 0.819), ([0.90] * 3, 0.738), ([0.97], 0.97)]
)
def test_swap_chain_matches_note_examples(hops, expected):
    assert physics.swap_chain_fidelity(hops) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(("first", "second"), [(0.95, 0.90), (0.8, 0.99), (0.6, 0.7)])
def test_swap_matches_density_matrix_entanglement_swapping(first, second):
    rho = np.kron(_werner(first), _werner(second))
    swapped = _bell_measure_and_correct(rho, 4, 1)
    reference = np.real(_PHI_PLUS.conj() @ swapped @ _PHI_PLUS)
    assert physics.swap_werner(first, second) == pytest.approx(reference, abs=1e-12)


def test_bell_diagonal_swap_reduces_to_imperfect_werner_swap():
    states = physics.werner_bell_diagonal([0.95, 0.90])
    swapped = physics.swap_bell_diagonal(
        states[0], states[1], gate_fidelity=0.98, measurement_fidelity=0.99
    )
    expected_p = 0.98 * (4 * 0.99**2 - 1) / 3 * np.prod(physics.werner_parameter([0.95, 0.90]))
    assert swapped.sum() == pytest.approx(1.0)
    assert swapped[0] == pytest.approx(physics.fidelity_from_werner_parameter(expected_p))
    assert swapped[0] == pytest.approx(
        physics.swap_werner(0.95, 0.90, gate_fidelity=0.98, measurement_fidelity=0.99)
    )


def test_bell_diagonal_chain_matches_werner_chain_and_composes_pauli_errors():
    hops = [0.97, 0.9, 0.85]
    chain = physics.swap_chain_bell_diagonal(physics.werner_bell_diagonal(hops))
    assert chain[0] == pytest.approx(physics.swap_chain_fidelity(hops))
    # Pure X error on one link, pure Z on the other: the swapped pair has a Y error.
    x_error = np.array([0.0, 1.0, 0.0, 0.0])
    z_error = np.array([0.0, 0.0, 0.0, 1.0])
    assert physics.swap_bell_diagonal(x_error, z_error) == pytest.approx([0, 0, 1, 0])


@pytest.mark.parametrize(
    ("fidelity", "purified", "success"), [(0.80, 0.838, 0.769), (0.90, 0.926, 0.876)]
)
def test_bbpssw_purification_matches_note_examples(fidelity, purified, success):
    new_fidelity, probability = physics.purify_bbpssw(fidelity)
    assert new_fidelity == pytest.approx(purified, abs=5e-4)
    assert probability == pytest.approx(success, abs=5e-4)


# --------------------------------------------------------------------------------------
# Loss, waiting, memory, latency
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length_km", "eta"), [(0, 1.0), (50, 0.1), (100, 1e-2), (500, 1e-10)])
def test_fibre_transmissivity_at_02_db_per_km(length_km, eta):
    assert physics.fibre_transmissivity(length_km) == pytest.approx(eta, rel=1e-9)


def test_gaussian_beam_uav_to_base_station_example_is_111_db():
    eta = physics.gaussian_beam_collection_efficiency(5.0, 100e-6, 0.10)
    assert -10 * math.log10(eta) == pytest.approx(11.1, abs=0.05)


def test_slant_atmosphere_of_eta_zen_08_matches_note():
    losses_db = -10 * np.log10(physics.atmospheric_transmissivity([90, 60, 30, 20], 0.8))
    assert losses_db == pytest.approx([0.97, 1.12, 1.94, 2.83], abs=0.01)
    assert physics.atmospheric_transmissivity(0.0, 0.8) == 0.0


def test_free_space_transmissivity_is_the_product_of_its_terms():
    eta = physics.free_space_transmissivity(
        20.0,
        5e-5,
        0.2,
        elevation_deg=30.0,
        zenith_transmissivity=0.8,
        receiver_efficiency=0.5,
        extra_loss_db=3.0,
    )
    expected = (
        physics.gaussian_beam_collection_efficiency(20.0, 5e-5, 0.2) * 0.8**2 * 0.5 * 10 ** (-0.3)
    )
    assert eta == pytest.approx(expected)


def test_heralding_success_probability_per_scheme():
    assert physics.heralding_success_probability(0.1) == pytest.approx(0.1)
    assert physics.heralding_success_probability(0.1, "midpoint") == pytest.approx(0.05)
    with pytest.raises(ValueError, match="allowed"):
        physics.heralding_success_probability(0.1, "teleporter")


def test_expected_waiting_time_matches_fibre_example():
    one = physics.expected_waiting_time_s(3.2e-2, 250e-6)
    four = physics.expected_waiting_time_s(3.2e-2, 250e-6, n_links=4)
    assert one == pytest.approx(7.8e-3, rel=0.01)
    assert four == pytest.approx(16e-3, rel=0.03)
    assert physics.expected_max_waiting_time_s([3.2e-2 / 250e-6] * 4) == pytest.approx(four)


def test_expected_max_waiting_time_matches_monte_carlo_for_unequal_rates():
    rates = np.array([100.0, 40.0, 900.0])
    rng = np.random.default_rng(7)
    samples = rng.exponential(1.0 / rates, size=(400_000, 3)).max(axis=1)
    # 6 standard errors of the sample mean.
    tolerance = 6 * samples.std() / math.sqrt(samples.size)
    assert physics.expected_max_waiting_time_s(rates) == pytest.approx(
        samples.mean(), abs=tolerance
    )
    assert physics.expected_max_waiting_time_s([5.0, 0.0]) == math.inf


def test_expected_max_waiting_time_of_long_paths_is_integrated_exactly_enough():
    # Beyond EXACT_MAX_LINKS links the closed form is replaced by a quadrature: it agrees
    # with the closed form where both work, and with H_N / lambda for 40 equal links
    # (before, paths of more than 20 links raised ValueError mid-run).
    from relay.physics.timing import EXACT_MAX_LINKS, _expected_max_by_quadrature

    rng = np.random.default_rng(3)
    for size in range(1, EXACT_MAX_LINKS + 1):
        rates = 10.0 ** rng.uniform(-6, 12, size)
        assert _expected_max_by_quadrature(rates) == pytest.approx(
            physics.expected_max_waiting_time_s(rates), rel=1e-10
        )
    harmonic = sum(1.0 / k for k in range(1, 41))
    assert physics.expected_max_waiting_time_s([7.0] * 40) == pytest.approx(
        harmonic / 7.0, rel=1e-10
    )
    assert math.isfinite(physics.expected_max_waiting_time_s(10.0 ** rng.uniform(-6, 12, 300)))


def test_memory_decoherence_shrinks_werner_parameter_exponentially():
    fidelity = physics.memory_decoherence(0.95, wait_s=0.1, coherence_time_s=1.0)
    expected_p = physics.werner_parameter(0.95) * math.exp(-2 * 0.1)
    assert physics.werner_parameter(fidelity) == pytest.approx(expected_p)
    one_qubit = physics.memory_decoherence(0.95, 0.1, 1.0, waiting_qubits=1)
    assert physics.werner_parameter(one_qubit) == pytest.approx(
        physics.werner_parameter(0.95) * math.exp(-0.1)
    )
    assert physics.memory_decoherence(0.95, 0.0, 1.0) == pytest.approx(0.95)
    assert physics.memory_decoherence(0.95, 5.0, math.inf) == pytest.approx(0.95)
    assert physics.memory_decoherence(0.95, 1e6, 1.0) == pytest.approx(0.25)


def test_propagation_delay_per_km():
    assert physics.propagation_delay_s(1.0) == pytest.approx(3.336e-6, rel=1e-3)
    assert physics.propagation_delay_s(1.0, "fibre") == pytest.approx(5e-6)


def test_teleport_latency_waits_for_pairs_then_two_bits_cross_the_path():
    single = physics.teleport_latency_s(1, pair_rate_hz=1000.0, path_delay_s=2e-3)
    assert single == pytest.approx(1e-3 + 2e-3)
    many = physics.teleport_latency_s(
        10_000, pair_rate_hz=1e6, path_delay_s=1e-3, classical_rate_bps=1e4
    )
    # Classical signalling (2 bits each at 10 kbit/s) is the bottleneck here.
    assert many == pytest.approx(2.0 + 1e-3)
    assert physics.classical_transfer_latency_s(1000, 1e-3, 8e6) == pytest.approx(2e-3)


# --------------------------------------------------------------------------------------
# Teleportation and the angle emulation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fidelity", [0.9, 0.8, 0.7, 0.5])
def test_teleport_average_fidelity_matches_density_matrix_simulation(fidelity):
    rng = np.random.default_rng(3)
    for _ in range(5):
        psi = rng.normal(size=2) + 1j * rng.normal(size=2)
        psi /= np.linalg.norm(psi)
        output = _teleported_state(psi, fidelity)
        # Depolarising: every input state gets the same fidelity, so the average is exact.
        assert np.real(psi.conj() @ output @ psi) == pytest.approx(
            physics.teleportation_average_fidelity(fidelity), abs=1e-12
        )
    assert physics.teleportation_average_fidelity(fidelity) == pytest.approx((2 * fidelity + 1) / 3)


def test_depolarize_bloch_vector_shrinks_by_werner_parameter():
    bloch = np.array([[0.0, 0.0, 1.0], [0.6, 0.0, 0.8]])
    assert physics.depolarize_bloch_vector(bloch, 0.85) == pytest.approx(0.8 * bloch)


def test_parameter_angle_scaling_is_invertible_and_handles_a_zero_range():
    values = np.array([-2.0, -0.5, 1.0, 3.0])
    angles = physics.angles_from_parameters(values, values.min(), values.max())
    assert angles.min() == 0.0 and angles.max() == pytest.approx(math.pi)
    assert physics.parameters_from_angles(angles, -2.0, 3.0) == pytest.approx(values)
    constant = physics.angles_from_parameters(np.full(3, 0.7), 0.7, 0.7)
    assert physics.parameters_from_angles(constant + 0.3, 0.7, 0.7) == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("fidelity", "angle", "shots"),
    [(0.7, 0.3, 1000), (0.95, 1.2, 400), (0.85, 0.02, 1000), (0.85, 3.1, 1000), (0.99, 1.57, 200)],
)
def test_atan2_estimator_bias_is_second_order_and_its_variance_matches_formula(
    fidelity, angle, shots
):
    samples = 200_000
    rng = np.random.default_rng(11)
    estimates = physics.emulate_angle_teleport(np.full(samples, angle), fidelity, shots, rng)
    variance = physics.angle_estimator_variance(angle, fidelity, shots)
    # Sample variance of 2e5 draws: relative standard error 0.3 %; the delta method is
    # exact to O(1/S^2). Tolerance: 3 %.
    assert estimates.var() == pytest.approx(variance, rel=0.03)
    # First-order unbiased: the second-order bias -sin(4 phi)/(2S) is at most 1/(2S);
    # allow that plus 5 standard errors of the mean.
    standard_error = math.sqrt(variance / samples)
    assert abs(estimates.mean() - angle) < 1 / (2 * shots) + 5 * standard_error


def _measured_bias(fidelity, angle, shots, samples=200_000, seed=0):
    """Monte-Carlo bias of the atan2 estimate, its standard error and the estimate's std."""
    rng = np.random.default_rng(seed)
    estimates = physics.emulate_angle_teleport(np.full(samples, angle), fidelity, shots, rng)
    spread = estimates.std()
    return estimates.mean() - angle, spread / math.sqrt(samples), spread


# Fidelity 0.5 is the lowest the rule covers (teleportation at the classical limit); the
# worst angles are the ends of the range (pulled inwards) and about 1.99 rad, where the
# second-order bias -sin(4 phi)/(2S) and the next order add up.
@pytest.mark.parametrize("fidelity", [0.5, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("angle", [0.0, math.pi / 8, math.pi / 2, 1.99, math.pi])
def test_at_the_fewest_shots_allowed_the_bias_is_below_a_tenth_of_the_spread(fidelity, angle):
    # The rule behind MIN_SHOTS (relay/channels/teleport.py): below a tenth of one
    # estimate's standard deviation, the bias stays below the standard error of a mean of
    # up to 100 UAVs' estimates. 2e5 samples measure it to about 0.002 std.
    bias, standard_error, spread = _measured_bias(fidelity, angle, MIN_SHOTS)
    assert abs(bias) + 4 * standard_error < 0.1 * spread, (bias, spread)


@pytest.mark.parametrize(("fidelity", "angle", "shots"), [(0.5, math.pi, 20), (0.7, math.pi, 4),
                                                          (0.5, 0.0, 2)])
def test_below_the_fewest_shots_the_bias_is_not_small_next_to_the_spread(fidelity, angle, shots):
    # Why the minimum is not 2 any more: few shots pull an estimate at the end of the
    # range towards its middle by a large part of the spread (0.43 std at 20 shots).
    bias, standard_error, spread = _measured_bias(fidelity, angle, shots)
    assert abs(bias) - 4 * standard_error > 0.1 * spread
    assert (bias < 0) == (angle > math.pi / 2)


def test_counts_with_no_direction_estimate_the_middle_of_the_range():
    # z = x = 0: atan2(0, 0) is 0, which put the estimate at the low end of the range.
    assert physics.estimate_angles(1, 1, 4) == pytest.approx(math.pi / 2)
    assert physics.estimate_angles(50, 50, 200) == pytest.approx(math.pi / 2)
    assert physics.estimate_angles(2, 1, 4) == 0.0  # z = 1, x = 0: a direction


def test_angle_variance_bound_and_shots_for_precision_table():
    assert physics.angle_estimator_variance(math.pi / 4, 0.85, 1000) <= 2 / (0.8**2 * 1000)
    assert physics.shots_for_precision(1e-2, [0.95, 0.85, 0.70]) == pytest.approx(
        [2326, 3166, 5629], abs=1
    )


def test_angle_sampling_is_seeded_and_rejects_odd_shots():
    angles = np.linspace(0, math.pi, 50)
    first = physics.sample_angle_counts(angles, 0.9, 100, np.random.default_rng(5))
    second = physics.sample_angle_counts(angles, 0.9, 100, np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    with pytest.raises(ValueError, match="even"):
        physics.sample_angle_counts(angles, 0.9, 101, np.random.default_rng(5))


# --------------------------------------------------------------------------------------
# QKD
# --------------------------------------------------------------------------------------


def test_qber_from_fidelity_and_intercept_resend():
    assert physics.qber_from_fidelity(0.95) == pytest.approx(0.0333, abs=1e-4)
    assert physics.qber_from_fidelity(0.90) == pytest.approx(0.0667, abs=1e-4)
    assert physics.bb84_qber(1.0, eavesdropper_fraction=1.0) == pytest.approx(0.25)
    assert physics.bb84_qber(1.0, eavesdropper_fraction=0.4) == pytest.approx(0.10)
    q0 = physics.qber_from_fidelity(0.95)
    assert physics.bb84_qber(0.95, 1.0) == pytest.approx(q0 + 0.25 - q0 / 2)


def test_full_intercept_resend_is_above_the_abort_threshold():
    assert physics.bb84_qber(0.99, 1.0) > physics.QBER_ABORT_THRESHOLD
    assert physics.secret_key_fraction(physics.bb84_qber(0.99, 1.0)) == 0.0


@pytest.mark.parametrize(
    ("qber", "fraction"), [(0.01, 0.838), (0.03, 0.611), (0.05, 0.427), (0.08, 0.196)]
)
def test_secret_key_fraction_matches_shor_preskill_table(qber, fraction):
    assert physics.secret_key_fraction(qber) == pytest.approx(fraction, abs=1e-3)


def test_secret_key_fraction_crosses_zero_at_eleven_percent():
    assert physics.secret_key_fraction(0.109) > 0.0
    assert physics.secret_key_fraction(0.111) == 0.0
    assert physics.binary_entropy([0.0, 0.5, 1.0]) == pytest.approx([0.0, 1.0, 0.0])


def test_clopper_pearson_upper_bound():
    assert physics.clopper_pearson_upper(0, 100, 0.99) == pytest.approx(1 - 0.01 ** (1 / 100))
    assert physics.clopper_pearson_upper(5, 5) == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    for errors, trials in [(3, 50), (40, 800), (200, 1000)]:
        reference = scipy_stats.beta.ppf(0.99, errors + 1, trials - errors)
        assert physics.clopper_pearson_upper(errors, trials, 0.99) == pytest.approx(reference)


# --------------------------------------------------------------------------------------
# Orbits
# --------------------------------------------------------------------------------------


def test_leo_period_and_slant_ranges_match_note():
    period_min = 2 * math.pi / physics.orbital_angular_speed(550.0) / 60
    assert period_min == pytest.approx(95.5, abs=0.1)
    assert physics.slant_range_km([90, 30, 10], 550.0) == pytest.approx([550, 993, 1815], abs=1)


def test_satellite_range_and_elevation_agree_with_slant_range():
    zenith = physics.satellite_range_and_elevation(0.0, 0.0, 550.0)
    assert zenith[0] == pytest.approx(550.0) and zenith[1] == pytest.approx(90.0)
    distance, elevation = physics.satellite_range_and_elevation(0.12, 0.0, 550.0)
    assert physics.slant_range_km(elevation, 550.0) == pytest.approx(distance)
