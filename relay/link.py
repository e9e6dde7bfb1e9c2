"""A UAV's relay path as a channel sees it, and the hops it is made of.

:class:`PathLink` is all a channel needs to know of a path in one round: it crosses
the Flower message boundary as config values (:meth:`PathLink.to_config`) and is
validated when read back. :class:`Hop` is one link of the round's graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from relay.topology_spec import LinkType


@dataclass(frozen=True)
class PathLink:
    """One UAV's relay path to the base station in one round, with its figures.

    Attributes
    ----------
    uav_id : str
        Name of the UAV (``uav-0`` ...).
    server_round : int
        Round the geometry belongs to.
    path : tuple of str
        Node names from the UAV to the base station.
    hop_link_types : tuple of str
        Link type of each hop.
    hop_distances_km : tuple of float
        Length of each hop, km.
    hop_fidelities : tuple of float
        Fidelity of each hop's pair when it is swapped, i.e. after decohering in
        memory while the other hops finish.
    end_to_end_fidelity : float
        Werner fidelity of the end-to-end pair after swapping along the path.
    success_probability : float
        Probability that one synchronous attempt succeeds on every hop and every
        swap: ``prod_i P_i · P_swap^(N-1)``.
    pair_rate_hz : float
        End-to-end Bell pairs per second (1 / ``waiting_time_s``).
    waiting_time_s : float
        Expected time until an end-to-end pair exists.
    propagation_delay_s : float
        One-way classical propagation delay along the path.
    latency_s : float
        Latency of teleporting one qubit: pair waiting time, then the 2 classical
        bits travel the path.
    classical_rate_bps : float
        Classical data rate of the path's bottleneck hop.
    """

    uav_id: str
    server_round: int
    path: tuple[str, ...]
    hop_link_types: tuple[str, ...]
    hop_distances_km: tuple[float, ...]
    hop_fidelities: tuple[float, ...]
    end_to_end_fidelity: float
    success_probability: float
    pair_rate_hz: float
    waiting_time_s: float
    propagation_delay_s: float
    latency_s: float
    classical_rate_bps: float

    _FLOAT_FIELDS: ClassVar[tuple[str, ...]] = (
        "end_to_end_fidelity",
        "success_probability",
        "pair_rate_hz",
        "waiting_time_s",
        "propagation_delay_s",
        "latency_s",
        "classical_rate_bps",
    )

    @property
    def hop_count(self) -> int:
        """Number of hops (elementary links) on the path."""
        return len(self.path) - 1

    def to_config(self, prefix: str = "link.") -> dict[str, Any]:
        """Flatten into values a Flower ``ConfigRecord`` accepts.

        Parameters
        ----------
        prefix : str
            Prepended to every key.

        Returns
        -------
        dict
            ``str``, ``int``, ``float`` and list values.
        """
        config: dict[str, Any] = {
            "uav_id": self.uav_id,
            "server_round": self.server_round,
            "path": list(self.path),
            "hop_link_types": list(self.hop_link_types),
            "hop_distances_km": [float(value) for value in self.hop_distances_km],
            "hop_fidelities": [float(value) for value in self.hop_fidelities],
        }
        config.update({name: float(getattr(self, name)) for name in self._FLOAT_FIELDS})
        return {prefix + key: value for key, value in config.items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], prefix: str = "link.") -> PathLink:
        """Rebuild a ``PathLink`` from :meth:`to_config` output, validating it.

        Parameters
        ----------
        config : Mapping
            For example the ``ConfigRecord`` a client receives.
        prefix : str
            Key prefix used by :meth:`to_config`.

        Returns
        -------
        PathLink

        Raises
        ------
        ValueError
            A key is missing or a value has the wrong type or range.
        """

        def get(key: str, kind: type | tuple[type, ...]) -> Any:
            full_key = prefix + key
            if full_key not in config:
                raise ValueError(f"link config is missing key {full_key!r}")
            value = config[full_key]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"link config key {full_key!r} has invalid value {value!r}")
            return value

        def get_list(key: str, kind: type | tuple[type, ...], length: int) -> tuple[Any, ...]:
            values = get(key, list)
            if len(values) != length or not all(
                isinstance(value, kind) and not isinstance(value, bool) for value in values
            ):
                raise ValueError(
                    f"link config key {prefix + key!r} must be a list of {length} values, "
                    f"got {values!r}"
                )
            return tuple(values)

        path = get("path", list)
        if len(path) < 2 or not all(isinstance(name, str) for name in path):
            raise ValueError(f"link config key {prefix + 'path'!r} must list >= 2 node names")
        hops = len(path) - 1
        floats = {name: float(get(name, (int, float))) for name in cls._FLOAT_FIELDS}
        link = cls(
            uav_id=get("uav_id", str),
            server_round=int(get("server_round", int)),
            path=tuple(path),
            hop_link_types=get_list("hop_link_types", str, hops),
            hop_distances_km=tuple(
                float(value) for value in get_list("hop_distances_km", (int, float), hops)
            ),
            hop_fidelities=tuple(
                float(value) for value in get_list("hop_fidelities", (int, float), hops)
            ),
            **floats,
        )
        link.validate()
        return link

    def validate(self) -> None:
        """Check ranges; raise ``ValueError`` naming the bad field."""
        if not 0.25 < self.end_to_end_fidelity <= 1.0:
            raise ValueError(
                f"end_to_end_fidelity must lie in (0.25, 1], got {self.end_to_end_fidelity}"
            )
        if not all(0.25 < value <= 1.0 for value in self.hop_fidelities):
            raise ValueError(f"hop_fidelities must lie in (0.25, 1], got {self.hop_fidelities}")
        if not 0.0 <= self.success_probability <= 1.0:
            raise ValueError(
                f"success_probability must lie in [0, 1], got {self.success_probability}"
            )
        for name in ("pair_rate_hz", "classical_rate_bps"):
            value = getattr(self, name)
            if not (value > 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("waiting_time_s", "propagation_delay_s", "latency_s"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if any(not (value >= 0.0 and math.isfinite(value)) for value in self.hop_distances_km):
            raise ValueError(f"hop_distances_km must be >= 0, got {self.hop_distances_km}")


@dataclass(frozen=True)
class Hop:
    """One link that exists in a round, with its physics."""

    first: str
    second: str
    link_type: LinkType
    distance_km: float
    elevation_deg: float
    transmissivity: float
    success_probability: float
    pair_rate_hz: float
    delay_s: float
    routing_weight: float

    def other(self, name: str) -> str:
        """The end of the hop that is not ``name``."""
        return self.second if name == self.first else self.first
