"""Bias of the teleport channel's atan2 estimator, computed exactly, against its spread.

Run ``python -m benchmarks.teleport_bias``; it prints one JSON object. For each shot
count ``S`` it enumerates every pair of Z and X counts (``(S/2 + 1)²`` outcomes, each
with its exact binomial probability), so the mean and standard deviation of
:func:`relay.physics.estimate_angles` are exact, not sampled. Over encoded angles
across ``[0, pi]`` and path fidelities from 0.5 to 1 it reports the worst bias as a
fraction of a parameter's range and as a fraction of the estimate's standard deviation,
and the smallest shot count from which that fraction stays below
:data:`CRITERION` (the rule behind :data:`relay.channels.teleport.MIN_SHOTS`).
``tests/test_relay_physics.py`` measures the same bias by Monte Carlo.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from relay import physics
from relay.channels.teleport import MIN_SHOTS

CRITERION = 0.1
"""Bias allowed, as a fraction of one estimate's standard deviation."""

FIDELITIES = tuple(np.linspace(0.5, 1.0, 11))
"""Path fidelities checked: 0.5 (teleportation at the classical limit 2/3) to 1."""


def _log_binomial_pmf(trials: int, probability: np.ndarray) -> np.ndarray:
    """``log P(k)`` for ``k = 0..trials``, one row per probability."""
    k = np.arange(trials + 1)
    log_choose = np.array(
        [math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1) for i in k]
    )
    q = probability[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        hits = np.where(k == 0, 0.0, k * np.log(q))
        misses = np.where(k == trials, 0.0, (trials - k) * np.log1p(-q))
    return log_choose + hits + misses


def estimator_moments(
    angles: np.ndarray, fidelity: float, shots: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and standard deviation of the estimated angle, one per encoded angle."""
    trials = physics.shots_per_basis(shots)
    werner_p = float(physics.werner_parameter(fidelity))
    counts = np.arange(trials + 1)
    estimates = physics.estimate_angles(counts[:, None], counts[None, :], shots)
    z_pmf = np.exp(_log_binomial_pmf(trials, (1.0 + werner_p * np.cos(angles)) / 2.0))
    x_pmf = np.exp(_log_binomial_pmf(trials, (1.0 + werner_p * np.sin(angles)) / 2.0))
    mean = np.einsum("ai,ij,aj->a", z_pmf, estimates, x_pmf)
    second = np.einsum("ai,ij,aj->a", z_pmf, estimates**2, x_pmf)
    return mean, np.sqrt(np.maximum(second - mean**2, 0.0))


def worst_bias(shots: int, angles: np.ndarray) -> dict:
    """Worst bias over ``angles`` and :data:`FIDELITIES`, in range units and in stds."""
    worst = {"shots": shots, "bias_over_range": 0.0, "bias_over_std": 0.0}
    for fidelity in FIDELITIES:
        mean, std = estimator_moments(angles, float(fidelity), shots)
        bias = np.abs(mean - angles)
        ratio = bias / std
        if ratio.max() > worst["bias_over_std"]:
            index = int(np.argmax(ratio))
            worst.update(bias_over_std=float(ratio[index]), fidelity=round(float(fidelity), 3),
                         angle=float(angles[index]))
        worst["bias_over_range"] = max(worst["bias_over_range"], float(bias.max() / math.pi))
    return worst


def main(argv: list[str] | None = None) -> None:
    """Print the bias table and the smallest shot count that meets :data:`CRITERION`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-shots", type=int, default=400,
                        help="scan even shot counts from 2 up to this (default 400)")
    parser.add_argument("--angles", type=int, default=61, help="encoded angles over [0, pi]")
    args = parser.parse_args(argv)
    angles = np.linspace(0.0, math.pi, args.angles)
    table = [worst_bias(shots, angles) for shots in range(2, args.max_shots + 1, 2)]
    # The smallest shot count from which every larger one meets the criterion.
    first = next((row["shots"] for index, row in enumerate(table)
                  if all(later["bias_over_std"] < CRITERION for later in table[index:])), None)
    by_fidelity = []
    for fidelity in (0.5, 0.7, 0.95):
        for shots in (4, 20, MIN_SHOTS, 2000):
            mean, std = estimator_moments(angles, fidelity, shots)
            bias = mean - angles
            index = int(np.argmax(np.abs(bias)))
            by_fidelity.append({
                "fidelity": fidelity, "shots": shots, "angle": float(angles[index]),
                "bias_over_range": float(bias[index] / math.pi),
                "bias_over_std": float(bias[index] / std[index]),
            })
    print(json.dumps({
        "criterion_bias_over_std": CRITERION,
        "fidelities": [round(float(f), 3) for f in FIDELITIES],
        "smallest_shots_meeting_it_from_then_on": first,
        "min_shots_in_use": MIN_SHOTS,
        "worst_over_fidelities": [
            row for row in table
            if row["shots"] in (2, 4, 6, 8, 10, 20, 40, 60, 78, 80, 100, 200, 400)
        ],
        "worst_over_angles": by_fidelity,
    }, indent=1))


if __name__ == "__main__":
    main()
