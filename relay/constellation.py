"""Walker-delta constellations as TLE files, for topologies with real orbits.

``python -m relay.constellation --total 12 --planes 3 --phasing 1 --altitude-km 550
--inclination-deg 53 --epoch 2026-03-01T00:00:00Z --out walker-leo.tle`` writes one
three-line element set per satellite (checksums computed; ``sgp4``'s
``Satrec.twoline2rv`` reads them). A Walker delta ``i: T/P/F`` puts ``T`` satellites
in ``P`` circular planes of inclination ``i``, their ascending nodes ``360/P`` degrees
apart; the ``T/P`` satellites of a plane are ``360 P/T`` degrees apart in mean anomaly,
and plane ``p`` is shifted by ``360 F p/T`` degrees. Any real TLE file from a public
catalogue can be used in a topology in the same way.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from relay.tle import Tle, format_tle, parse_epoch_utc, write_tle_file

WGS72_EQUATORIAL_RADIUS_KM = 6378.135
"""SGP4's Earth radius (WGS72): altitudes are measured from it."""

WGS72_GM_KM3_S2 = 398_600.8
"""SGP4's gravitational parameter (WGS72)."""

FIRST_CATALOG_NUMBER = 90_001
"""Catalogue numbers of generated satellites start here, clear of most real objects'."""


def walker_delta(
    total: int,
    planes: int,
    phasing: int,
    altitude_km: float,
    inclination_deg: float,
    epoch_utc: str,
    name_prefix: str = "SAT",
) -> list[Tle]:
    """The TLEs of a Walker-delta constellation ``inclination: total/planes/phasing``.

    Parameters
    ----------
    total : int
        Number of satellites, 1 to 9999; a multiple of ``planes``.
    planes : int
        Number of orbital planes, >= 1.
    phasing : int
        Relative phasing ``F``, 0 to ``planes - 1``.
    altitude_km : float
        Circular-orbit altitude above SGP4's equatorial radius, 160 to 2000 km.
    inclination_deg : float
        Orbital inclination, 0 to 180 degrees.
    epoch_utc : str
        ISO time of the elements (``2026-03-01T00:00:00Z``).
    name_prefix : str
        Satellites are named ``<prefix>-0`` .. ``<prefix>-<total-1>``, plane by plane.

    Returns
    -------
    list of Tle
    """
    for label, value, low, high in (("total", total, 1, 9999), ("planes", planes, 1, total)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{label} = {value!r} is not allowed; must be an integer {low}-{high}")
    if total % planes:
        raise ValueError(f"total = {total} is not a multiple of planes = {planes}")
    if isinstance(phasing, bool) or not isinstance(phasing, int) or not 0 <= phasing < planes:
        raise ValueError(f"phasing = {phasing!r} is not allowed; must be an integer 0-{planes - 1}")
    if not 160.0 <= altitude_km <= 2000.0:
        raise ValueError(f"altitude_km = {altitude_km} is not allowed; must be 160 to 2000 (LEO)")
    if not 0.0 <= inclination_deg <= 180.0:
        raise ValueError(f"inclination_deg = {inclination_deg} is not allowed; must be 0 to 180")
    if len(f"{name_prefix}-{total - 1}") > 24:
        raise ValueError(f"name prefix {name_prefix!r} is too long; TLE names have 24 characters")
    epoch = parse_epoch_utc(epoch_utc)
    semi_major_km = WGS72_EQUATORIAL_RADIUS_KM + altitude_km
    mean_motion = math.sqrt(WGS72_GM_KM3_S2 / semi_major_km**3) * 86_400.0 / (2.0 * math.pi)
    per_plane = total // planes
    tles = []
    for index in range(total):
        plane, slot = divmod(index, per_plane)
        tles.append(format_tle(
            f"{name_prefix}-{index}",
            FIRST_CATALOG_NUMBER + index,
            epoch,
            inclination_deg=inclination_deg,
            raan_deg=360.0 * plane / planes,
            # A tiny eccentricity, as real "circular" orbits have; the perigee sits at
            # the node, so the mean anomaly is the in-plane phase.
            eccentricity=1e-4,
            argument_of_perigee_deg=0.0,
            mean_anomaly_deg=360.0 * slot / per_plane + 360.0 * phasing * plane / total,
            mean_motion_rev_day=mean_motion,
        ))
    return tles


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write a Walker-delta constellation as a TLE file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, required=True, help="number of satellites T")
    parser.add_argument("--planes", type=int, required=True, help="number of planes P")
    parser.add_argument("--phasing", type=int, default=1, help="relative phasing F (0..P-1)")
    parser.add_argument("--altitude-km", type=float, default=550.0, help="altitude (160-2000)")
    parser.add_argument("--inclination-deg", type=float, default=53.0, help="inclination")
    parser.add_argument("--epoch", required=True, help="ISO epoch, e.g. 2026-03-01T00:00:00Z")
    parser.add_argument("--out", type=Path, required=True, help="TLE file to write")
    parser.add_argument("--name-prefix", default="SAT", help="satellite names: PREFIX-<index>")
    args = parser.parse_args(argv)
    try:
        tles = walker_delta(args.total, args.planes, args.phasing, args.altitude_km,
                            args.inclination_deg, args.epoch, args.name_prefix)
    except ValueError as error:
        parser.error(str(error))
    write_tle_file(args.out, tles)
    print(f"wrote {args.out} ({len(tles)} satellites)")


if __name__ == "__main__":
    main()
