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


def enu_range_and_elevation(
    satellite_enu_km: ArrayLike,
    observer_x_km: ArrayLike,
    observer_y_km: ArrayLike,
    observer_altitude_km: ArrayLike,
) -> tuple[FloatArray, FloatArray]:
    """Range and elevation of satellites given in east/north/up km, seen from the local plane.

    The plane's origin is a point of the ground; an observer at plane coordinates
    ``(x, y)`` and altitude ``h`` stands on the sphere of radius :data:`EARTH_RADIUS_KM`
    that touches the ground there, at ``c + (R + h) n`` with ``c = (0, 0, -R)`` the
    sphere's centre and ``n`` the observer's up, along ``(x, y, R)``. Elevation is
    measured from the observer's own horizon (perpendicular to ``n``), so an observer
    100 km from the origin sees the sky tilted by 0.9 degrees, as on the real Earth. At
    the origin ``n`` is the ellipsoid's up and the result is exact.

    Parameters
    ----------
    satellite_enu_km : array_like
        Satellite positions, shape ``(..., 3)``: east, north, up of the origin.
    observer_x_km, observer_y_km, observer_altitude_km : array_like
        Observers (broadcast against ``satellite_enu_km[..., 0]``).

    Returns
    -------
    tuple of numpy.ndarray
        ``(range_km, elevation_deg)``.
    """
    satellite = np.asarray(satellite_enu_km, dtype=np.float64)
    x_km = np.asarray(observer_x_km, dtype=np.float64)
    y_km = np.asarray(observer_y_km, dtype=np.float64)
    height = np.asarray(observer_altitude_km, dtype=np.float64)
    norm = np.sqrt(x_km**2 + y_km**2 + EARTH_RADIUS_KM**2)
    up_x, up_y, up_z = x_km / norm, y_km / norm, EARTH_RADIUS_KM / norm
    radius = EARTH_RADIUS_KM + height
    d_x = satellite[..., 0] - radius * up_x
    d_y = satellite[..., 1] - radius * up_y
    d_z = satellite[..., 2] - (radius * up_z - EARTH_RADIUS_KM)
    distance = np.sqrt(d_x**2 + d_y**2 + d_z**2)
    sin_elevation = (d_x * up_x + d_y * up_y + d_z * up_z) / distance
    return distance, np.degrees(np.arcsin(np.clip(sin_elevation, -1.0, 1.0)))
