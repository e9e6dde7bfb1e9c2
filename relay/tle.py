"""Two-line element sets (TLEs): reading, writing, and propagating them into the local plane.

A topology file may place LEO satellites from TLEs instead of circular orbits
(``tle_file``/``tle_name`` on a node, or ``[[tle_satellites]]``; see
:mod:`relay.topology_file`). Any TLE from a public catalogue (CelesTrak, Space-Track)
works, as do the Walker constellations :mod:`relay.constellation` writes.

Reading a TLE file (:func:`read_tle_file`) checks every line (length, line numbers,
checksums, field formats, low-Earth-orbit mean motion) without importing SGP4, so
loading a topology stays cheap. :class:`TleTracks` propagates the satellites with
``sgp4`` and rotates them into Earth-fixed axes with ``skyfield``'s Earth-rotation
angle; both are imported only when a TLE satellite is first placed.

Frames
------
Positions are east/north/up (ENU) kilometres relative to the local plane's origin: the
point at geodetic ``latitude_deg``, ``longitude_deg`` on the WGS84 ellipsoid. The ENU
vector is computed from the satellite's and the origin's Earth-fixed (ITRS) positions,
so Earth's curvature and oblateness are exact; :func:`relay.physics.enu_range_and_elevation`
then places observers of the plane on the curved Earth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

MIN_MEAN_MOTION_REV_DAY = 11.25
"""Slowest low-Earth orbit: about 2000 km altitude (the top of the LEO layer)."""

MAX_MEAN_MOTION_REV_DAY = 16.5
"""Fastest: about 160 km altitude, below which an orbit decays within days."""

MAX_EPOCH_GAP_DAYS = 30.0
"""Largest gap between a TLE's epoch and the topology's ``epoch_utc``: SGP4 errors grow
by about a kilometre a day, so a month-old TLE no longer says where a satellite is."""


@dataclass(frozen=True)
class Tle:
    """One satellite's element set: its name and its two lines, as read."""

    name: str
    line1: str
    line2: str

    @property
    def epoch(self) -> datetime:
        """The element set's epoch (UTC), from columns 19-32 of line 1."""
        return tle_epoch(self.line1)


def checksum(line: str) -> int:
    """TLE checksum of the first 68 columns: digits summed, each ``-`` counts 1, modulo 10."""
    total = sum(int(char) if char.isdigit() else (1 if char == "-" else 0) for char in line[:68])
    return total % 10


def tle_epoch(line1: str) -> datetime:
    """The epoch of a line 1 (``YYDDD.DDDDDDDD``, years 57-99 are 19xx), as a UTC datetime."""
    year = int(line1[18:20])
    year += 1900 if year >= 57 else 2000
    day = float(line1[20:32])
    return datetime(year, 1, 1, tzinfo=UTC) + timedelta(days=day - 1.0)


def epoch_gap_problem(lines: tuple[str, str] | None, epoch: datetime) -> str:
    """Why a TLE is too far from a topology's ``epoch_utc`` for SGP4, or ``""``."""
    if lines is None:
        return ""
    gap_days = abs((tle_epoch(lines[0]) - epoch).total_seconds()) / 86_400.0
    if gap_days <= MAX_EPOCH_GAP_DAYS:
        return ""
    return (
        f"its TLE epoch ({tle_epoch(lines[0]):%Y-%m-%d %H:%M}) is {gap_days:.1f} days from "
        f"epoch_utc; at most {MAX_EPOCH_GAP_DAYS:g} (SGP4 drifts by about a km a day)"
    )


def parse_epoch_utc(text: str) -> datetime:
    """An ISO 8601 time (``2026-03-01T00:00:00Z``; no zone means UTC) as a UTC datetime.

    Raises
    ------
    ValueError
        Not an ISO time, or outside 1957-2056 (the years a TLE's two-digit year covers).
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise ValueError(
            f"epoch_utc = {text!r} is not an ISO 8601 time such as '2026-03-01T00:00:00Z'"
        ) from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if not 1957 <= moment.year <= 2056:
        raise ValueError(
            f"epoch_utc = {text!r} is not allowed; must be from 1957 to 2056 (the years a "
            "TLE's two-digit year covers)"
        )
    return moment


def format_tle(
    name: str,
    catalog_number: int,
    epoch: datetime,
    inclination_deg: float,
    raan_deg: float,
    eccentricity: float,
    argument_of_perigee_deg: float,
    mean_anomaly_deg: float,
    mean_motion_rev_day: float,
) -> Tle:
    """A TLE with the given mean elements, drag terms zero, checksums computed.

    Parameters
    ----------
    name : str
        Satellite name (line 0), at most 24 characters.
    catalog_number : int
        NORAD catalogue number, 1 to 99999.
    epoch : datetime.datetime
        Epoch of the elements (UTC; a naive datetime is taken as UTC), 1957 to 2056.
    inclination_deg, raan_deg, argument_of_perigee_deg, mean_anomaly_deg : float
        Angles in degrees; inclination 0 to 180, the others taken modulo 360.
    eccentricity : float
        From 0 to below 1.
    mean_motion_rev_day : float
        Kozai mean motion, revolutions per day (0 to 100).

    Returns
    -------
    Tle
    """
    if not 0 < len(name) <= 24:
        raise ValueError(f"TLE name {name!r} must have 1 to 24 characters")
    if not 1 <= catalog_number <= 99_999:
        raise ValueError(f"catalog number {catalog_number} is not allowed; must be 1 to 99999")
    if not 0.0 <= inclination_deg <= 180.0:
        raise ValueError(f"inclination {inclination_deg} deg is not allowed; must be 0 to 180")
    if not 0.0 <= eccentricity < 1.0:
        raise ValueError(f"eccentricity {eccentricity} is not allowed; must be from 0 to below 1")
    if not 0.0 < mean_motion_rev_day < 100.0:
        raise ValueError(f"mean motion {mean_motion_rev_day} rev/day is not allowed; must be 0-100")
    if epoch.tzinfo is None:
        epoch = epoch.replace(tzinfo=UTC)
    epoch = epoch.astimezone(UTC)
    if not 1957 <= epoch.year <= 2056:
        raise ValueError(f"TLE epoch {epoch.isoformat()} is not allowed; must be 1957 to 2056")
    start = datetime(epoch.year, 1, 1, tzinfo=UTC)
    day = 1.0 + (epoch - start).total_seconds() / 86_400.0
    body1 = (
        f"1 {catalog_number:05d}U {'':8} {epoch.year % 100:02d}{day:012.8f} "
        f" .00000000  00000-0  00000-0 0  999"
    )
    ecc = f"{round(eccentricity * 1e7):07d}"
    body2 = (
        f"2 {catalog_number:05d} {inclination_deg:8.4f} {raan_deg % 360.0:8.4f} {ecc} "
        f"{argument_of_perigee_deg % 360.0:8.4f} {mean_anomaly_deg % 360.0:8.4f} "
        f"{mean_motion_rev_day:11.8f}    1"
    )
    return Tle(name, body1 + str(checksum(body1)), body2 + str(checksum(body2)))


def write_tle_file(path: str | Path, tles: Sequence[Tle]) -> Path:
    """Write TLEs in the three-line format (name, line 1, line 2) and check they read back."""
    path = Path(path)
    text = "".join(f"{tle.name}\n{tle.line1}\n{tle.line2}\n" for tle in tles)
    path.write_text(text, encoding="utf-8")
    read_tle_file(path)
    return path


@lru_cache(maxsize=16)
def _read_cached(path: str, mtime_ns: int) -> tuple[Tle, ...]:
    return _parse_tle_text(path, Path(path).read_text(encoding="utf-8"))


def read_tle_file(path: str | Path) -> tuple[Tle, ...]:
    """Every element set of a TLE file, each line checked (no SGP4 needed).

    The file holds two-line sets, each optionally preceded by a name line (a set
    without one is named ``SAT-<catalogue number>``); blank lines are skipped.

    Raises
    ------
    ValueError
        The file cannot be read or holds no TLE, or a line is malformed; the message
        names the file, the line number and what is wrong.
    """
    path = Path(path)
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError as error:
        raise ValueError(f"TLE file {str(path)!r}: cannot be read ({error})") from error
    return _read_cached(str(path), mtime_ns)


def _parse_tle_text(source: str, text: str) -> tuple[Tle, ...]:
    lines = [(number, line.rstrip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    tles: list[Tle] = []
    position = 0
    while position < len(lines):
        number, line = lines[position]
        name = ""
        if not line.startswith(("1 ", "2 ")):
            name = line[2:].strip() if line.startswith("0 ") else line.strip()
            position += 1
            if position >= len(lines):
                raise ValueError(
                    f"TLE file {source!r} line {number}: name {name!r} is not followed by "
                    "a line 1 and a line 2"
                )
        if position + 1 >= len(lines):
            number, line = lines[position]
            raise ValueError(f"TLE file {source!r} line {number}: line 1 has no line 2 after it")
        (number1, line1), (number2, line2) = lines[position], lines[position + 1]
        _check_line(source, number1, line1, "1")
        _check_line(source, number2, line2, "2")
        if line1[2:7] != line2[2:7]:
            raise ValueError(
                f"TLE file {source!r} line {number2}: catalogue number {line2[2:7]!r} differs "
                f"from line 1's {line1[2:7]!r}"
            )
        _check_fields(source, number1, line1, number2, line2)
        tles.append(Tle(name or f"SAT-{line1[2:7].strip()}", line1, line2))
        position += 2
    if not tles:
        raise ValueError(f"TLE file {source!r}: holds no two-line element set")
    return tuple(tles)


def _check_line(source: str, number: int, line: str, kind: str) -> None:
    where = f"TLE file {source!r} line {number}"
    if not line.startswith(f"{kind} "):
        raise ValueError(f"{where}: expected line {kind} of an element set, got {line[:20]!r}")
    if len(line) != 69:
        raise ValueError(f"{where}: line {kind} has {len(line)} characters; a TLE line has 69")
    if not line[68].isdigit() or int(line[68]) != checksum(line):
        raise ValueError(
            f"{where}: checksum is {checksum(line)} but the line ends with {line[68]!r}"
        )


def _check_fields(source: str, number1: int, line1: str, number2: int, line2: str) -> None:
    fields = (
        (number1, line1, 18, 32, "epoch"),
        (number2, line2, 8, 16, "inclination"),
        (number2, line2, 17, 25, "right ascension of the ascending node"),
        (number2, line2, 26, 33, "eccentricity"),
        (number2, line2, 52, 63, "mean motion"),
    )
    values = {}
    for number, line, start, end, label in fields:
        try:
            values[label] = float(line[start:end])
        except ValueError:
            raise ValueError(
                f"TLE file {source!r} line {number}: {label} {line[start:end]!r} (columns "
                f"{start + 1}-{end}) is not a number"
            ) from None
    motion = values["mean motion"]
    if not MIN_MEAN_MOTION_REV_DAY <= motion <= MAX_MEAN_MOTION_REV_DAY:
        raise ValueError(
            f"TLE file {source!r} line {number2}: mean motion {motion} rev/day is not allowed; "
            f"must be from {MIN_MEAN_MOTION_REV_DAY} to {MAX_MEAN_MOTION_REV_DAY} (low Earth "
            "orbit, about 160 to 2000 km)"
        )
    if not 0.0 <= values["inclination"] <= 180.0:
        raise ValueError(
            f"TLE file {source!r} line {number2}: inclination {values['inclination']} is not "
            "allowed; must be 0 to 180 degrees"
        )


# --------------------------------------------------------------------------------------
# Propagation (imports sgp4 and skyfield on first use)
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _timescale() -> Any:
    from skyfield.api import load

    # The built-in leap-second and UT1 tables: no download at run time.
    return load.timescale(builtin=True)


def enu_rotation(latitude_deg: float, longitude_deg: float) -> npt.NDArray[np.float64]:
    """The 3 x 3 matrix taking Earth-fixed (ITRS) vectors to east/north/up at a geodetic point."""
    lat, lon = math.radians(latitude_deg), math.radians(longitude_deg)
    return np.array([
        [-math.sin(lon), math.cos(lon), 0.0],
        [-math.sin(lat) * math.cos(lon), -math.sin(lat) * math.sin(lon), math.cos(lat)],
        [math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)],
    ])


class TleTracks:
    """Where a topology's TLE satellites are, in the local plane's ENU frame, at any time.

    Parameters
    ----------
    tles : sequence of (str, str)
        Line 1 and line 2 of each satellite, in node order.
    latitude_deg, longitude_deg : float
        Geodetic position of the local plane's origin (WGS84).
    epoch_utc : str
        ISO time of emulated time 0.
    """

    def __init__(
        self, tles: Sequence[tuple[str, str]], latitude_deg: float, longitude_deg: float,
        epoch_utc: str,
    ) -> None:
        from sgp4.api import Satrec
        from skyfield.api import wgs84

        self._satellites = [Satrec.twoline2rv(line1, line2) for line1, line2 in tles]
        self._rotation = enu_rotation(latitude_deg, longitude_deg)
        self._origin = np.asarray(wgs84.latlon(latitude_deg, longitude_deg, 0.0).itrs_xyz.km)
        epoch = parse_epoch_utc(epoch_utc)
        self._epoch = (epoch.year, epoch.month, epoch.day, epoch.hour, epoch.minute,
                       epoch.second + epoch.microsecond * 1e-6)

    def enu_km(self, times_s: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Satellite positions at emulated times: shape ``(len(times), satellites, 3)``.

        Raises
        ------
        ValueError
            SGP4 cannot propagate a satellite to a time (it has decayed, or its orbit
            degenerated); the message names the satellite's line 1 and the time.
        """
        from skyfield.sgp4lib import theta_GMST1982

        times = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
        year, month, day, hour, minute, second = self._epoch
        moment = _timescale().utc(year, month, day, hour, minute, second + times)
        whole = np.atleast_1d(moment.whole)
        # SGP4 reads UTC Julian dates (AIAA 2006-6753), as skyfield's EarthSatellite does.
        fraction = np.atleast_1d(moment.tai_fraction - moment._leap_seconds() / 86_400.0)
        # TEME -> Earth-fixed is a rotation by the Greenwich mean sidereal angle of UT1
        # (polar motion is not in the built-in tables, so it is zero here as in skyfield).
        theta, _ = theta_GMST1982(whole, np.atleast_1d(moment.ut1_fraction))
        cos_theta, sin_theta = np.cos(theta), np.sin(theta)
        out = np.empty((len(times), len(self._satellites), 3))
        for index, satellite in enumerate(self._satellites):
            errors, teme, _ = satellite.sgp4_array(whole, fraction)
            if np.any(errors):
                bad = int(np.flatnonzero(errors)[0])
                raise ValueError(
                    f"SGP4 cannot propagate TLE {satellite.satnum_str!r} to t = "
                    f"{times[bad]:g} s (error code {int(errors[bad])}); use a TLE whose "
                    "epoch is near the topology's epoch_utc"
                )
            itrs = np.stack([
                cos_theta * teme[:, 0] + sin_theta * teme[:, 1],
                -sin_theta * teme[:, 0] + cos_theta * teme[:, 1],
                teme[:, 2],
            ], axis=1)
            out[:, index, :] = (itrs - self._origin) @ self._rotation.T
        return out
