"""Reading and validating a SAGIN topology description file (TOML).

The file is checked at this boundary, with one clear error per problem naming the
file, the key and what is allowed; ``relay/topologies/default.toml`` documents the
format.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from relay.topology import Topology
from relay.topology_spec import (
    HERALDING_SCHEMES,
    LAYERS,
    LINK_TYPE_NAMES,
    MEDIA,
    LinkType,
    NodeSpec,
)

DEFAULT_TOPOLOGY_PATH = Path(__file__).with_name("topologies") / "default.toml"
"""The shipped default: 10 UAVs, 1 HAP, 2 LEO satellites and 1 base station."""


def load_topology(path: str | Path | None = None) -> Topology:
    """Read and validate a SAGIN topology description file.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        TOML file; ``None`` loads the shipped default
        (``relay/topologies/default.toml``).

    Returns
    -------
    Topology

    Raises
    ------
    ValueError
        The file is missing, is not valid TOML, or breaks the schema; the
        message names the file, the bad key or value, and what is allowed.
    """
    if path is None:
        path = DEFAULT_TOPOLOGY_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"topology file {str(path)!r}: cannot be read ({error})") from error
    return _TopologyReader(str(path), text).read()


_NODE_KEYS = {
    "ground": ("name", "layer", "x_km", "y_km", "altitude_km", "base_station"),
    "uav": ("name", "layer", "x_km", "y_km", "altitude_km", "patrol_radius_km", "speed_km_s"),
    "hap": ("name", "layer", "x_km", "y_km", "altitude_km", "drift_km"),
    "leo": (
        "name",
        "layer",
        "altitude_km",
        "closest_approach_s",
        "track_offset_km",
        "track_azimuth_deg",
    ),
}

_REQUIRED_NODE_KEYS = {
    "ground": ("x_km", "y_km", "altitude_km"),
    "uav": ("x_km", "y_km", "altitude_km"),
    "hap": ("x_km", "y_km", "altitude_km"),
    "leo": ("altitude_km", "closest_approach_s"),
}

_COMMON_LINK_KEYS = (
    "medium",
    "raw_fidelity",
    "pair_rate_hz",
    "memory_coherence_time_s",
    "max_range_km",
    "classical_rate_bps",
    "min_elevation_deg",
    "heralding",
    "extra_loss_db",
)

_MEDIUM_LINK_KEYS = {
    "fibre": ("attenuation_db_per_km",),
    "free-space": (
        "divergence_rad",
        "aperture_radius_m",
        "beam_waist_m",
        "zenith_transmissivity",
        "atmosphere_db_per_km",
        "receiver_efficiency",
    ),
}

_TOPOLOGY_KEYS = (
    "name",
    "round_duration_s",
    "swap_success_probability",
    "swap_gate_fidelity",
    "swap_measurement_fidelity",
    "min_end_to_end_fidelity",
)


class _TopologyReader:
    """Turns the parsed TOML into a :class:`Topology`, with one clear error per problem."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text

    def fail(self, message: str) -> ValueError:
        return ValueError(f"topology file {self.source!r}: {message}")

    def read(self) -> Topology:
        try:
            document = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as error:
            raise self.fail(f"not valid TOML ({error})") from error
        self.check_keys(document, ("topology", "nodes", "links"), "top level")
        settings = self.table(document, "topology", "top level")
        self.check_keys(settings, _TOPOLOGY_KEYS, "[topology]")
        nodes = self.read_nodes(document)
        link_types = self.read_link_types(document)
        name = settings.get("name", Path(self.source).stem)
        if not isinstance(name, str):
            raise self.fail(f"[topology] name must be a string, got {name!r}")
        return Topology(
            name=name,
            source=self.source,
            nodes=nodes,
            link_types=link_types,
            round_duration_s=self.number(
                settings, "round_duration_s", "[topology]", minimum=0.0, strict=True, default=60.0
            ),
            swap_success_probability=self.number(
                settings,
                "swap_success_probability",
                "[topology]",
                minimum=0.0,
                maximum=1.0,
                strict=True,
                default=1.0,
            ),
            swap_gate_fidelity=self.number(
                settings, "swap_gate_fidelity", "[topology]", minimum=0.0, maximum=1.0, default=1.0
            ),
            swap_measurement_fidelity=self.number(
                settings,
                "swap_measurement_fidelity",
                "[topology]",
                minimum=0.5,
                maximum=1.0,
                default=1.0,
            ),
            min_end_to_end_fidelity=self.number(
                settings,
                "min_end_to_end_fidelity",
                "[topology]",
                minimum=0.25,
                maximum=1.0,
                default=0.5,
            ),
        )

    def read_nodes(self, document: dict[str, Any]) -> tuple[NodeSpec, ...]:
        entries = document.get("nodes")
        if not isinstance(entries, list) or not entries:
            raise self.fail("needs at least one [[nodes]] entry")
        nodes: list[NodeSpec] = []
        seen: set[str] = set()
        for position, entry in enumerate(entries):
            where = f"[[nodes]] entry {position + 1}"
            if not isinstance(entry, dict):
                raise self.fail(f"{where} must be a table")
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise self.fail(f"{where} needs a non-empty string 'name', got {name!r}")
            where = f"node {name!r}"
            if name in seen:
                raise self.fail(f"{where} is defined twice; node names must be unique")
            seen.add(name)
            layer = entry.get("layer")
            if layer not in LAYERS:
                raise self.fail(
                    f"{where} has unknown layer {layer!r}; allowed: {', '.join(LAYERS)}"
                )
            self.check_keys(entry, _NODE_KEYS[layer], f"{where} (layer {layer!r})")
            for key in _REQUIRED_NODE_KEYS[layer]:
                if key not in entry:
                    raise self.fail(f"{where} is missing required key {key!r}")
            base_station = entry.get("base_station", False)
            if not isinstance(base_station, bool):
                raise self.fail(f"{where} key 'base_station' must be true or false")
            nodes.append(
                NodeSpec(
                    name=name,
                    layer=layer,
                    x_km=self.number(entry, "x_km", where, default=0.0),
                    y_km=self.number(entry, "y_km", where, default=0.0),
                    altitude_km=self.number(
                        entry,
                        "altitude_km",
                        where,
                        minimum=0.0,
                        strict=layer == "leo",
                        default=0.0,
                    ),
                    base_station=base_station,
                    patrol_radius_km=self.number(
                        entry, "patrol_radius_km", where, minimum=0.0, default=0.0
                    ),
                    speed_km_s=self.number(entry, "speed_km_s", where, minimum=0.0, default=0.0),
                    drift_km=self.number(entry, "drift_km", where, minimum=0.0, default=0.0),
                    closest_approach_s=self.number(entry, "closest_approach_s", where, default=0.0),
                    track_offset_km=self.number(entry, "track_offset_km", where, default=0.0),
                    track_azimuth_deg=self.number(entry, "track_azimuth_deg", where, default=0.0),
                )
            )
        base_stations = [node.name for node in nodes if node.base_station]
        if len(base_stations) != 1:
            raise self.fail(
                "needs exactly one ground node with base_station = true, "
                f"found {len(base_stations)}: {base_stations}"
            )
        if not any(node.layer == "uav" for node in nodes):
            raise self.fail("needs at least one node with layer = 'uav'")
        return tuple(nodes)

    def read_link_types(self, document: dict[str, Any]) -> tuple[LinkType, ...]:
        tables = self.table(document, "links", "top level")
        if not tables:
            raise self.fail("needs at least one [links.<layer>-<layer>] table")
        link_types: list[LinkType] = []
        seen: dict[frozenset[str], str] = {}
        for name, entry in tables.items():
            layers = self.link_layers(name)
            where = f"[links.{name}]"
            if layers in seen:
                raise self.fail(f"{where} duplicates [links.{seen[layers]}]")
            seen[layers] = name
            if not isinstance(entry, dict):
                raise self.fail(f"{where} must be a table")
            medium = entry.get("medium")
            if medium not in MEDIA:
                raise self.fail(
                    f"{where} has unknown medium {medium!r}; allowed: {', '.join(MEDIA)}"
                )
            self.check_keys(
                entry, _COMMON_LINK_KEYS + _MEDIUM_LINK_KEYS[medium], f"{where} (medium {medium!r})"
            )
            heralding = entry.get("heralding", "direct")
            if heralding not in HERALDING_SCHEMES:
                raise self.fail(
                    f"{where} has unknown heralding {heralding!r}; "
                    f"allowed: {', '.join(HERALDING_SCHEMES)}"
                )
            raw_fidelity = self.number(entry, "raw_fidelity", where, required=True)
            if not 0.25 < raw_fidelity <= 1.0:
                raise self.fail(f"{where} raw_fidelity = {raw_fidelity} is outside (0.25, 1]")
            free_space = medium == "free-space"
            link_types.append(
                LinkType(
                    name=name,
                    layers=layers,
                    medium=medium,
                    raw_fidelity=raw_fidelity,
                    pair_rate_hz=self.number(
                        entry, "pair_rate_hz", where, minimum=0.0, strict=True, required=True
                    ),
                    memory_coherence_time_s=self.number(
                        entry,
                        "memory_coherence_time_s",
                        where,
                        minimum=0.0,
                        strict=True,
                        required=True,
                        allow_inf=True,
                    ),
                    max_range_km=self.number(
                        entry,
                        "max_range_km",
                        where,
                        minimum=0.0,
                        strict=True,
                        required=True,
                        allow_inf=True,
                    ),
                    classical_rate_bps=self.number(
                        entry, "classical_rate_bps", where, minimum=0.0, strict=True, required=True
                    ),
                    min_elevation_deg=self.number(
                        entry, "min_elevation_deg", where, minimum=-90.0, maximum=90.0, default=0.0
                    ),
                    heralding=heralding,
                    attenuation_db_per_km=self.number(
                        entry, "attenuation_db_per_km", where, minimum=0.0, default=0.2
                    ),
                    divergence_rad=self.number(
                        entry,
                        "divergence_rad",
                        where,
                        minimum=0.0,
                        strict=True,
                        required=free_space,
                        default=0.0,
                    ),
                    aperture_radius_m=self.number(
                        entry,
                        "aperture_radius_m",
                        where,
                        minimum=0.0,
                        strict=True,
                        required=free_space,
                        default=0.0,
                    ),
                    beam_waist_m=self.number(
                        entry, "beam_waist_m", where, minimum=0.0, default=0.0
                    ),
                    zenith_transmissivity=self.number(
                        entry,
                        "zenith_transmissivity",
                        where,
                        minimum=0.0,
                        maximum=1.0,
                        strict=True,
                        default=1.0,
                    ),
                    atmosphere_db_per_km=self.number(
                        entry, "atmosphere_db_per_km", where, minimum=0.0, default=0.0
                    ),
                    receiver_efficiency=self.number(
                        entry,
                        "receiver_efficiency",
                        where,
                        minimum=0.0,
                        maximum=1.0,
                        strict=True,
                        default=1.0,
                    ),
                    extra_loss_db=self.number(
                        entry, "extra_loss_db", where, minimum=0.0, default=0.0
                    ),
                )
            )
        return tuple(link_types)

    def link_layers(self, name: str) -> frozenset[str]:
        first, _, second = name.partition("-")
        canonical = [f"{first}-{second}", f"{second}-{first}"]
        if not any(candidate in LINK_TYPE_NAMES for candidate in canonical):
            raise self.fail(
                f"unknown link type [links.{name}]; allowed: {', '.join(LINK_TYPE_NAMES)} "
                "(either order)"
            )
        return frozenset((first, second))

    def table(self, container: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        value = container.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(f"{where} key {key!r} must be a table")
        return value

    def check_keys(self, table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(f"{where} has unknown key {key!r}; allowed: {', '.join(allowed)}")

    def number(
        self,
        table: dict[str, Any],
        key: str,
        where: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        strict: bool = False,
        required: bool = False,
        allow_inf: bool = False,
        default: float = 0.0,
    ) -> float:
        """Read a number; ``strict`` makes ``minimum`` exclusive."""
        if key not in table:
            if required:
                raise self.fail(f"{where} is missing required key {key!r}")
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{where} key {key!r} must be a number, got {value!r}")
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise self.fail(f"{where} key {key!r} must be a finite number, got {value!r}")
        low = "" if minimum is None else f"{'>' if strict else '>='} {minimum:g}"
        high = "" if maximum is None else f"<= {maximum:g}"
        allowed = " and ".join(part for part in (low, high) if part)
        too_low = minimum is not None and (value <= minimum if strict else value < minimum)
        too_high = maximum is not None and value > maximum
        if too_low or too_high:
            raise self.fail(f"{where} key {key!r} = {value:g} is not allowed; must be {allowed}")
        return value
