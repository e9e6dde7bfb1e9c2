"""Link loss and heralded pair generation: fibre, free-space optics, atmosphere (§2.6, §2.7).

Transmissivities are fractions in [0, 1]; losses are in dB and distances in km.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from relay.physics._checks import FloatArray, as_non_negative, as_probability


def transmissivity_from_db(loss_db: ArrayLike) -> FloatArray:
    """Transmissivity of a loss given in dB: ``eta = 10^(-dB/10)``."""
    return 10.0 ** (-np.asarray(loss_db, dtype=np.float64) / 10.0)



def fibre_transmissivity(
    length_km: ArrayLike, attenuation_db_per_km: ArrayLike = 0.2
) -> FloatArray:
    """Fibre transmissivity ``eta = 10^(-alpha L / 10)``.

    Default ``alpha = 0.2 dB/km`` at 1550 nm; 50 km -> 0.1 (§2.6; SeQUeNCe
    quantum channel).

    Parameters
    ----------
    length_km : array_like
        Fibre length, km (>= 0).
    attenuation_db_per_km : array_like
        Attenuation ``alpha``.

    Returns
    -------
    numpy.ndarray
        Transmissivity in (0, 1].
    """
    length_km = as_non_negative(length_km, "length_km")
    return transmissivity_from_db(length_km * np.asarray(attenuation_db_per_km))



def gaussian_beam_collection_efficiency(
    distance_km: ArrayLike,
    divergence_rad: ArrayLike,
    aperture_radius_m: ArrayLike,
    beam_waist_m: ArrayLike = 0.0,
) -> FloatArray:
    """Fraction of a Gaussian beam caught by a circular receiver aperture.

    ``w(L) = sqrt(w0² + (theta L)²)`` and ``eta_geo = 1 - exp(-2a²/w(L)²)``
    (§2.6; same form as the NetSquid free-space loss model). Example: 5 km,
    100 µrad, a = 10 cm -> 11.1 dB (§5.2).

    Parameters
    ----------
    distance_km : array_like
        Link distance ``L``, km.
    divergence_rad : array_like
        1/e² half-angle divergence ``theta``, rad.
    aperture_radius_m : array_like
        Receiver aperture radius ``a``, m.
    beam_waist_m : array_like
        Beam waist ``w0`` at the transmitter, m.

    Returns
    -------
    numpy.ndarray
        Geometric efficiency ``eta_geo`` in [0, 1].
    """
    distance_m = as_non_negative(distance_km, "distance_km") * 1e3
    beam_radius_sq = np.asarray(beam_waist_m) ** 2 + (np.asarray(divergence_rad) * distance_m) ** 2
    with np.errstate(divide="ignore"):
        ratio = 2.0 * np.asarray(aperture_radius_m, dtype=np.float64) ** 2 / beam_radius_sq
    return -np.expm1(-ratio)



def atmospheric_transmissivity(
    elevation_deg: ArrayLike, zenith_transmissivity: ArrayLike
) -> FloatArray:
    """Slant-path atmospheric transmissivity ``eta_zen^(1/sin(elevation))``.

    Bourgoin et al., NJP 15, 023006 (2013) (§2.6): ``eta_zen = 0.8`` gives
    0.97 dB at zenith and 1.94 dB at 30°.

    Parameters
    ----------
    elevation_deg : array_like
        Elevation of the link above the horizon, degrees (> 0 for any light).
    zenith_transmissivity : array_like
        Transmissivity straight up, ``eta_zen``.

    Returns
    -------
    numpy.ndarray
        Transmissivity in [0, 1]; 0 at or below the horizon unless ``eta_zen = 1``.
    """
    zenith = np.asarray(zenith_transmissivity, dtype=np.float64)
    sin_elevation = np.sin(np.radians(np.asarray(elevation_deg, dtype=np.float64)))
    with np.errstate(divide="ignore", invalid="ignore"):
        airmass = np.where(sin_elevation > 0.0, 1.0 / sin_elevation, np.inf)
        eta = np.where(zenith >= 1.0, 1.0, zenith**airmass)
    return np.asarray(eta, dtype=np.float64)



def free_space_transmissivity(
    distance_km: ArrayLike,
    divergence_rad: ArrayLike,
    aperture_radius_m: ArrayLike,
    *,
    beam_waist_m: ArrayLike = 0.0,
    elevation_deg: ArrayLike = 90.0,
    zenith_transmissivity: ArrayLike = 1.0,
    atmosphere_db_per_km: ArrayLike = 0.0,
    receiver_efficiency: ArrayLike = 1.0,
    extra_loss_db: ArrayLike = 0.0,
) -> FloatArray:
    """Total transmissivity of a free-space optical link.

    ``eta = eta_geo · eta_atm · eta_rx · eta_extra`` (§2.6): Gaussian-beam
    capture, slant atmosphere ``eta_zen^(1/sin el)`` and/or a horizontal
    ``dB/km`` term (Kim/Kruse visibility model; 0.42 dB/km at V = 23 km),
    receiver optics times detector efficiency, and a fixed margin (pointing,
    turbulence) in dB.

    Parameters
    ----------
    distance_km, divergence_rad, aperture_radius_m, beam_waist_m : array_like
        See :func:`gaussian_beam_collection_efficiency`.
    elevation_deg, zenith_transmissivity : array_like
        See :func:`atmospheric_transmissivity`.
    atmosphere_db_per_km : array_like
        Horizontal atmospheric loss applied over the whole distance.
    receiver_efficiency : array_like
        ``eta_rx`` in [0, 1].
    extra_loss_db : array_like
        Fixed extra loss (pointing, turbulence margin), dB.

    Returns
    -------
    numpy.ndarray
        Transmissivity in [0, 1].
    """
    geometric = gaussian_beam_collection_efficiency(
        distance_km, divergence_rad, aperture_radius_m, beam_waist_m
    )
    slant = atmospheric_transmissivity(elevation_deg, zenith_transmissivity)
    horizontal = transmissivity_from_db(np.asarray(atmosphere_db_per_km) * np.asarray(distance_km))
    return (
        geometric
        * slant
        * horizontal
        * np.asarray(receiver_efficiency, dtype=np.float64)
        * transmissivity_from_db(extra_loss_db)
    )



def heralding_success_probability(
    transmissivity: ArrayLike, scheme: Literal["direct", "midpoint"] = "direct"
) -> FloatArray:
    """Probability that one entanglement-generation attempt is heralded.

    ``direct`` (source at one end, memory at the other): ``P = eta``;
    ``midpoint`` (memory-memory with a double-click Bell measurement in the
    middle, Barrett–Kok): ``P = eta_A eta_B / 2 = eta/2`` with ``eta`` the
    product of the two arms (§2.7). Loss is heralded: it costs time, not fidelity.

    Parameters
    ----------
    transmissivity : array_like
        Total link transmissivity including detector efficiency.
    scheme : {"direct", "midpoint"}
        Generation scheme.

    Returns
    -------
    numpy.ndarray
        Success probability per attempt.
    """
    eta = as_probability(transmissivity, "transmissivity")
    if scheme == "direct":
        return eta
    if scheme == "midpoint":
        return eta / 2.0
    raise ValueError(f"unknown heralding scheme {scheme!r}; allowed: 'direct', 'midpoint'")
