"""Circular-orbit geometry of LEO satellites seen from the ground or the air (§5.1)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from relay.physics._checks import FloatArray, as_non_negative

EARTH_RADIUS_KM = 6371.0
"""Mean Earth radius (§5.1)."""


EARTH_GM_KM3_S2 = 398_600.4418
"""Earth's gravitational parameter mu (§5.1)."""


def orbital_angular_speed(altitude_km: ArrayLike) -> FloatArray:
    """Angular speed of a circular orbit, ``sqrt(mu / r³)`` rad/s (§5.1; 550 km -> 95.5 min)."""
    radius = EARTH_RADIUS_KM + as_non_negative(altitude_km, "altitude_km")
    return np.sqrt(EARTH_GM_KM3_S2 / radius**3)



def slant_range_km(elevation_deg: ArrayLike, altitude_km: ArrayLike) -> FloatArray:
    """Ground-to-satellite slant range at a given elevation.

    ``d(el) = sqrt((R_E + h)² - (R_E cos el)²) - R_E sin el`` (§5.1): 550 km at
    30° gives 993 km.
    """
    elevation = np.radians(np.asarray(elevation_deg, dtype=np.float64))
    radius = EARTH_RADIUS_KM + as_non_negative(altitude_km, "altitude_km")
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
