"""python -m relay.constellation: valid TLEs with the Walker-delta geometry asked for."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sgp4.api import Satrec

from relay.constellation import WGS72_EQUATORIAL_RADIUS_KM, main, walker_delta
from relay.tle import checksum, read_tle_file


def test_walker_tles_parse_and_have_the_geometry(tmp_path):
    out = tmp_path / "w.tle"
    main(["--total", "12", "--planes", "3", "--phasing", "1", "--altitude-km", "550",
          "--inclination-deg", "53", "--epoch", "2026-03-01T00:00:00Z", "--out", str(out),
          "--name-prefix", "W"])
    tles = read_tle_file(out)
    assert [tle.name for tle in tles] == [f"W-{index}" for index in range(12)]
    satellites = []
    for tle in tles:
        for line in (tle.line1, tle.line2):
            assert len(line) == 69 and int(line[68]) == checksum(line)
        satellite = Satrec.twoline2rv(tle.line1, tle.line2)
        assert satellite.error == 0
        satellites.append(satellite)
    raan = np.degrees([s.nodeo for s in satellites])
    anomaly = np.degrees([s.mo for s in satellites])
    assert np.allclose(np.degrees([s.inclo for s in satellites]), 53.0, atol=1e-4)
    # Three planes 120 degrees apart, four satellites each, 90 degrees apart in a plane,
    # plane p shifted by 360 F p / T = 30 p degrees.
    assert np.allclose(raan, np.repeat([0.0, 120.0, 240.0], 4), atol=1e-4)
    for plane in range(3):
        expected = (90.0 * np.arange(4) + 30.0 * plane) % 360.0
        assert np.allclose(anomaly[4 * plane:4 * plane + 4], expected, atol=1e-4)
    # Altitude: the mean radius over one orbit, from SGP4 itself.
    satellite = satellites[0]
    period_min = 2 * math.pi / satellite.no_kozai
    minutes = np.linspace(0.0, period_min, 200)
    errors, positions, _ = satellite.sgp4_array(np.full(200, satellite.jdsatepoch),
                                                satellite.jdsatepochF + minutes / 1440.0)
    assert not errors.any()
    mean_altitude = np.linalg.norm(positions, axis=1).mean() - WGS72_EQUATORIAL_RADIUS_KM
    assert abs(mean_altitude - 550.0) < 15.0  # J2 moves the mean radius by a few km


@pytest.mark.parametrize(("arguments", "message"), [
    ((12, 5, 1, 550.0, 53.0), "total = 12 is not a multiple of planes = 5"),
    ((12, 3, 3, 550.0, 53.0), "phasing = 3 is not allowed; must be an integer 0-2"),
    ((12, 3, 1, 100.0, 53.0), "altitude_km = 100.0 is not allowed; must be 160 to 2000"),
    ((12, 3, 1, 550.0, 190.0), "inclination_deg = 190.0 is not allowed; must be 0 to 180"),
])
def test_bad_walker_parameters(arguments, message):
    with pytest.raises(ValueError, match=message):
        walker_delta(*arguments, epoch_utc="2026-03-01T00:00:00Z")
