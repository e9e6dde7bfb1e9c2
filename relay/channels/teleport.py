"""``teleport`` channel: parameters emulated through teleportation of angle-encoded qubits.

This is an **emulation of an analogue quantum channel, not a bandwidth channel**
(``shared/research/relay_physics.md`` §3.1). Each float parameter ``w`` of an
array is mapped to a meridian angle ``phi = pi (w - w_min) / (w_max - w_min)``
(per-array affine scaling; ``w_min`` and ``w_max`` travel as public classical
metadata, which is what makes it invertible). The sender prepares ``shots``
copies of ``cos(phi/2)|0> + sin(phi/2)|1>`` and teleports each through the
path's end-to-end Werner resource, which acts as a depolarising channel; the
receiver measures half of the copies in Z and half in X. The outcome counts are
sampled exactly from the binomial distributions (§3.2) at the sender's side of
the emulation and carried in the envelope as the receiver's measurement record;
:meth:`TeleportChannel.decode` applies the atan2 estimator to them
(:func:`relay.physics.estimate_angles`). That estimator does not use the path's
Werner parameter: depolarising shrinks the Z and X averages alike, so their angle
stays put and a lower fidelity only widens its spread. It is biased at few shots;
:data:`MIN_SHOTS` keeps the bias below a tenth of the estimate's standard deviation.

Cost, reported honestly: one end-to-end Bell pair per shot
(``bell_pairs = float parameters x shots``), 2 classical bits per teleport plus
2 per swap on the path, and the time to generate those pairs at the path's
end-to-end pair rate. A 10^5-parameter model at 2,000 shots needs 2x10^8 pairs.

Arrays that are not float16/32/64 (integer counters, for example) are sent
classically and unchanged, and their bytes are counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeGuard

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from relay import physics
from relay.channels.base import Channel, ChannelRejected, ChannelReport, Header
from relay.channels.envelope import (
    array_record_nbytes,
    array_to_numpy,
    check_envelope_header,
    config_record_nbytes,
    copy_array,
    get_record,
    is_finite_number,
    new_envelope,
    rejecting_malformed,
)
from relay.channels.registry import register_channel
from relay.link import PathLink
from relay.options import Option, satisfies

METADATA_RECORD = "relay.teleport"
COUNTS_RECORD = "relay.counts"
CLASSICAL_RECORD = "relay.classical"

TELEPORTED_DTYPES = ("float16", "float32", "float64")
"""Array dtypes that are angle-encoded and teleported; others go classically."""

DEFAULT_SHOTS = 2000
"""About 1 % of each array's range at F = 0.95 (§3.2 table: 2,326 for 1 %)."""

MIN_SHOTS = 100
"""Fewest shots per parameter: where the estimator's bias is below a tenth of its spread.

The atan2 estimator is biased (:func:`relay.physics.estimate_angles`), and averaging the
UAVs' updates shrinks their noise but not their bias: below a tenth of one estimate's
standard deviation, the bias stays below the standard error of a mean over up to 100
UAVs. Exact enumeration of the counts, over path fidelities from 0.5 (teleportation at
the classical limit) to 1 and encoded values over the whole range, puts the worst bias at
0.059 standard deviations at 100 shots (fidelity 0.5, a value at an end of the range),
against 0.43 at 20 shots and 0.86 at 4; from 78 shots on it stays below 0.1
(``python -m benchmarks.teleport_bias``; ``tests/test_relay_physics.py`` measures it by
Monte Carlo)."""

MAX_SHOTS = 10_000_000
"""Most shots per parameter a run may ask for."""


def _check_shots(shots: int) -> None:
    physics.shots_per_basis(shots)
    if not MIN_SHOTS <= shots <= MAX_SHOTS:
        raise ValueError(f"shots must be from {MIN_SHOTS} to {MAX_SHOTS}, got {shots}")


@register_channel
class TeleportChannel(Channel):
    """Angle-encoded parameters teleported ``shots`` times each through the link.

    Parameters
    ----------
    shots : int
        Copies teleported per parameter (even, from :data:`MIN_SHOTS`; half measured in
        Z, half in X). The estimate's standard deviation is at most about
        ``(w_max - w_min) / pi * sqrt(2 / (p^2 shots))`` with ``p`` the path's
        Werner parameter; its bias is below a tenth of that on paths of fidelity 0.5
        and above.
    """

    name = "teleport"
    options = (
        Option(
            "shots", DEFAULT_SHOTS, f"an even integer from {MIN_SHOTS} to {MAX_SHOTS}",
            satisfies(_check_shots), help="teleported copies per parameter",
        ),
    )

    def __init__(self, shots: int = DEFAULT_SHOTS) -> None:
        _check_shots(shots)
        self.shots = int(shots)

    def encode(
        self,
        arrays: ArrayRecord,
        link: PathLink,
        header: Header,
        rng: np.random.Generator,
    ) -> tuple[RecordDict, ChannelReport]:
        """Teleport every float parameter; the envelope holds the receiver's counts.

        Raises
        ------
        ValueError
            A float array holds NaN or infinity (it has no angle).
        """
        counts = ArrayRecord()
        classical = ArrayRecord()
        metadata: dict[str, list] = {"order": [], "dtypes": [], "lower": [], "upper": []}
        count_dtype = np.uint16 if self.shots // 2 <= np.iinfo(np.uint16).max else np.uint32
        teleported = 0
        for key, array in arrays.items():
            metadata["order"].append(key)
            if array.dtype not in TELEPORTED_DTYPES:
                classical[key] = copy_array(array)
                continue
            values = array.numpy().astype(np.float64)
            if not np.all(np.isfinite(values)):
                raise ValueError(f"teleport channel cannot encode non-finite values in {key!r}")
            lower = float(values.min()) if values.size else 0.0
            upper = float(values.max()) if values.size else 0.0
            angles = physics.angles_from_parameters(values, lower, upper)
            n_z, n_x = physics.sample_angle_counts(
                angles, link.end_to_end_fidelity, self.shots, rng
            )
            counts[key] = Array(np.stack([n_z, n_x]).astype(count_dtype))
            metadata["dtypes"].append(array.dtype)
            metadata["lower"].append(lower)
            metadata["upper"].append(upper)
            teleported += values.size
        envelope = new_envelope(self.name, header)
        metadata_record = ConfigRecord({"shots": self.shots, **metadata})
        envelope[METADATA_RECORD] = metadata_record
        envelope[COUNTS_RECORD] = counts
        envelope[CLASSICAL_RECORD] = classical
        return envelope, self._report(metadata_record, classical, teleported, link)

    def decode(
        self,
        envelope: RecordDict,
        link: PathLink,
        header: Header,
        rng: np.random.Generator,
    ) -> tuple[ArrayRecord, ChannelReport]:
        """Estimate every teleported parameter with the atan2 estimator (§3.2)."""
        with rejecting_malformed(self.name):
            check_envelope_header(envelope, self.name, header)
            metadata = get_record(envelope, METADATA_RECORD, ConfigRecord)
            counts = get_record(envelope, COUNTS_RECORD, ArrayRecord)
            classical = get_record(envelope, CLASSICAL_RECORD, ArrayRecord)
            shots, order, dtypes, lower, upper = _read_metadata(metadata)
            if set(counts) & set(classical) or sorted([*counts, *classical]) != sorted(order):
                raise ChannelRejected(
                    "teleport envelope: array names do not match the metadata order"
                )
            if len(counts) != len(dtypes):
                raise ChannelRejected(
                    "teleport envelope: needs one dtype and range per teleported array"
                )
            decoded = ArrayRecord()
            teleported = 0
            estimates = {}
            for index, key in enumerate(key for key in order if key in counts):
                estimates[key] = _estimate_array(
                    counts[key], shots, dtypes[index], lower[index], upper[index]
                )
                teleported += estimates[key].size
            for key in order:
                if key in estimates:
                    decoded[key] = Array(estimates[key])
                else:
                    decoded[key] = copy_array(classical[key])
            report = self._report(metadata, classical, teleported, link, shots=shots)
        return decoded, report

    def _report(
        self,
        metadata: ConfigRecord,
        classical: ArrayRecord,
        teleported: int,
        link: PathLink,
        shots: int | None = None,
    ) -> ChannelReport:
        """Cost of an envelope with these metadata and classical records."""
        shots = self.shots if shots is None else shots
        bell_pairs = teleported * shots
        # 2 bits per teleport, plus 2 per swap that built each end-to-end pair.
        classical_bits = physics.CLASSICAL_BITS_PER_TELEPORT * link.hop_count * bell_pairs
        n_bytes = config_record_nbytes(metadata) + array_record_nbytes(classical)
        latency_s = (
            physics.teleport_latency_s(
                bell_pairs, link.pair_rate_hz, link.propagation_delay_s, link.classical_rate_bps
            )
            + 8.0 * n_bytes / link.classical_rate_bps
        )
        return ChannelReport(
            channel=self.name,
            n_bytes=n_bytes,
            latency_s=float(latency_s),
            fidelity=link.end_to_end_fidelity,
            bell_pairs=bell_pairs,
            classical_bits=classical_bits,
        )


def _read_metadata(
    metadata: ConfigRecord,
) -> tuple[int, list[str], list[str], list[float], list[float]]:
    shots = metadata["shots"]
    if isinstance(shots, bool) or not isinstance(shots, int):
        raise ChannelRejected(f"teleport envelope: shots must be an int, got {shots!r}")
    # Fewer shots than a run may ask for would bring a biased update into the average.
    _check_shots(shots)
    order, dtypes = metadata["order"], metadata["dtypes"]
    lower, upper = metadata["lower"], metadata["upper"]
    if not (
        isinstance(order, list)
        and isinstance(dtypes, list)
        and isinstance(lower, list)
        and isinstance(upper, list)
    ):
        raise ChannelRejected("teleport envelope: order, dtypes, lower and upper must be lists")
    if not _all_str(order) or len(set(order)) != len(order):
        raise ChannelRejected("teleport envelope: order must list distinct array names")
    if not _all_teleported_dtypes(dtypes):
        raise ChannelRejected(
            f"teleport envelope: dtypes must be among {', '.join(TELEPORTED_DTYPES)}"
        )
    if not (len(dtypes) == len(lower) == len(upper)) or not all(
        _is_finite_number(low) and _is_finite_number(high) and low <= high
        for low, high in zip(lower, upper, strict=True)
    ):
        raise ChannelRejected("teleport envelope: ranges must be finite with lower <= upper")
    return shots, order, dtypes, [float(v) for v in lower], [float(v) for v in upper]


# _read_metadata's checks as type guards, so that the values they accept are typed.
def _all_str(values: Sequence[object]) -> TypeGuard[list[str]]:
    return all(isinstance(value, str) for value in values)


def _all_teleported_dtypes(values: Sequence[object]) -> TypeGuard[list[str]]:
    return all(value in TELEPORTED_DTYPES for value in values)


def _is_finite_number(value: object) -> TypeGuard[int | float]:
    return is_finite_number(value)


def _estimate_array(
    counts_array: Array, shots: int, dtype: str, lower: float, upper: float
) -> np.ndarray:
    counts = array_to_numpy(counts_array)
    if counts.dtype.kind != "u" or counts.ndim < 1 or counts.shape[0] != 2:
        raise ChannelRejected(
            "teleport envelope: counts must be unsigned integers of shape (2, *array_shape)"
        )
    if counts.size and int(counts.max()) > shots // 2:
        raise ChannelRejected("teleport envelope: a count exceeds the shots per basis")
    if not math.isfinite(upper - lower):
        raise ChannelRejected("teleport envelope: parameter range overflows")
    angles = physics.estimate_angles(counts[0], counts[1], shots)
    return physics.parameters_from_angles(angles, lower, upper).astype(dtype)
