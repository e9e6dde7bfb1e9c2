"""Reading and validating a SAGIN topology description file (TOML).

The schema is a table per section (``[topology]``; ``[[nodes]]`` by layer;
``[links.<layer>-<layer>]`` by medium): key -> type, allowed range and meaning.
One small generic loop reads every section against its table, so the file is
checked at this boundary with one clear error per problem, naming the file, the
key and what is allowed. Keys left out take the defaults of the dataclass they
fill (:class:`~relay.topology_spec.NodeSpec`, :class:`~relay.topology_spec.LinkType`,
:class:`~relay.topology.Topology`). ``relay/topologies/default.toml`` is a
commented example.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.tle import Tle, epoch_gap_problem, parse_epoch_utc, read_tle_file
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


@dataclass(frozen=True)
class _Key:
    """One key of a topology-file section: its type, allowed values and meaning.

    Every number has a finite, physically meaningful range, so that any file that loads
    gives finite geometry and link figures in every round (``tests/test_relay_topology.py``
    fuzzes this); the help text says what the bounds mean.

    Attributes
    ----------
    help : str
        What the key means, with its unit and what its bounds mean.
    kind : type
        ``float`` (any TOML number, read as float), ``bool`` or ``str``.
    required : bool
        The key must be present; otherwise a missing key takes the dataclass default.
    minimum, maximum : float, optional
        Allowed range of a number; ``maximum`` is inclusive.
    strict : bool
        ``minimum`` is exclusive.
    allow_inf : bool
        ``inf`` is allowed besides the range (a perfect memory, an unlimited range).
    allow_zero : bool
        ``0`` is allowed besides the range (a UAV that hovers).
    choices : tuple of str
        Allowed values of a string.
    interval : bool
        Report a number out of range as ``key = value is outside (min, max]``.
    """

    help: str
    kind: type = float
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    strict: bool = False
    allow_inf: bool = False
    allow_zero: bool = False
    choices: tuple[str, ...] = ()
    interval: bool = False

    def allowed(self) -> str:
        """The allowed values of a number, in words: ``0 or from 0.001 to 100``."""
        if self.minimum is not None and self.maximum is not None and not self.strict:
            allowed = f"from {self.minimum:g} to {self.maximum:g}"
        else:
            low = "" if self.minimum is None else f"{'>' if self.strict else '>='} {self.minimum:g}"
            high = "" if self.maximum is None else f"<= {self.maximum:g}"
            allowed = " and ".join(part for part in (low, high) if part)
        if self.allow_zero:
            allowed = f"0 or {allowed}"
        if self.allow_inf:
            allowed = f"{allowed}, or inf"
        return allowed


# --------------------------------------------------------------------------------------
# The schema. Key order is the order keys are checked in and listed in errors.
# --------------------------------------------------------------------------------------

# Bounds shared by several keys. Each says why it is where it is.
_PLANE_KM = 10_000.0
"""Largest distance from the origin in the local plane: a quarter of the Earth's
circumference. Further out the plane no longer stands for the ground."""

_LONGEST_ROUND_S = 86_400.0
"""A round lasts at most a day: longer is no federated round."""

_TOPOLOGY_KEYS: dict[str, _Key] = {
    "name": _Key("Name of the topology; defaults to the file name without suffix.", str),
    "round_duration_s": _Key(
        "Simulated time between two FL rounds (the mobility step), s: from 1 s to 1 day.",
        minimum=1.0,
        maximum=_LONGEST_ROUND_S,
    ),
    "swap_success_probability": _Key(
        "Probability that one entanglement swap succeeds (1: memory-based; 0.5: linear "
        "optics); below 0.001 a chain of swaps never completes.",
        minimum=0.001,
        maximum=1.0,
    ),
    "swap_gate_fidelity": _Key(
        "Two-qubit gate reliability g of a swap (§2.2), a probability.", minimum=0.0, maximum=1.0
    ),
    "swap_measurement_fidelity": _Key(
        "Single-qubit measurement fidelity m of a swap (§2.2); 0.5 is a coin toss.",
        minimum=0.5,
        maximum=1.0,
    ),
    "min_end_to_end_fidelity": _Key(
        "A UAV whose best path falls below this end-to-end fidelity has no path; above "
        "0.25, the fidelity of a maximally mixed pair, which carries nothing.",
        minimum=0.25,
        maximum=1.0,
        strict=True,
        interval=True,
    ),
    "uav_train_s": _Key(
        "Mission time a UAV's local training takes (its compute model, for the emulated "
        "clock of the asynchronous mode), s: from 0.1 s to 1 day; a UAV's own train_s "
        "overrides it.",
        minimum=0.1,
        maximum=_LONGEST_ROUND_S,
    ),
    "latitude_deg": _Key(
        "Geodetic latitude of the local plane's origin (the base station's site), degrees "
        "north: -90 to 90. Needed with TLE satellites.",
        minimum=-90.0,
        maximum=90.0,
    ),
    "longitude_deg": _Key(
        "Geodetic longitude of the origin, degrees east: -180 to 180. Needed with TLE "
        "satellites.",
        minimum=-180.0,
        maximum=180.0,
    ),
    "epoch_utc": _Key(
        "ISO 8601 UTC time of emulated time 0, e.g. '2026-03-01T00:00:00Z', 1957 to 2056. "
        "Needed with TLE satellites.",
        str,
    ),
}
"""``[topology]``: settings of the whole network."""

_NODE_IDENTITY = {
    "name": _Key("Unique node name, e.g. 'uav-3'.", str, required=True),
    "layer": _Key("Layer of the node.", str, required=True, choices=LAYERS),
}
_PLANE_POSITION = {
    "x_km": _Key(
        "East of the origin (near the base station) in round 0, km; within a quarter of "
        "the Earth's circumference.",
        required=True,
        minimum=-_PLANE_KM,
        maximum=_PLANE_KM,
    ),
    "y_km": _Key(
        "North of the origin in round 0, km; within a quarter of the Earth's circumference.",
        required=True,
        minimum=-_PLANE_KM,
        maximum=_PLANE_KM,
    ),
}


def _altitude(help: str, minimum: float, maximum: float) -> dict[str, _Key]:
    return {"altitude_km": _Key(help, required=True, minimum=minimum, maximum=maximum)}


_NODE_KEYS: dict[str, dict[str, _Key]] = {
    "ground": {
        **_NODE_IDENTITY,
        **_PLANE_POSITION,
        **_altitude(
            "Height of the station's terminal, km: up to 9 km (a mountain-top site).", 0.0, 9.0
        ),
        "base_station": _Key("The aggregator's node; exactly one node is.", bool),
    },
    "uav": {
        **_NODE_IDENTITY,
        **_PLANE_POSITION,
        **_altitude(
            "Height above the ground, km: up to 20 km (high-altitude long-endurance UAVs).",
            0.0,
            20.0,
        ),
        "patrol_radius_km": _Key(
            "Radius of the patrol circle, km: 0 hovers; otherwise from 1 m to 100 km.",
            minimum=0.001,
            maximum=100.0,
            allow_zero=True,
        ),
        "speed_km_s": _Key(
            "Speed along the patrol circle, km/s: 0 hovers; at most 0.35 km/s, about the "
            "speed of sound.",
            minimum=0.0,
            maximum=0.35,
        ),
        "train_s": _Key(
            "This UAV's local training time (mission time), s: 0 takes the topology's "
            "uav_train_s; otherwise from 0.1 s to 1 day.",
            minimum=0.1,
            maximum=_LONGEST_ROUND_S,
            allow_zero=True,
        ),
    },
    "hap": {
        **_NODE_IDENTITY,
        **_PLANE_POSITION,
        **_altitude("Height above the ground, km: the stratosphere, 15 to 30 km.", 15.0, 30.0),
        "drift_km": _Key(
            "Station keeping: a fresh offset within this radius each round, km; at most 50.",
            minimum=0.0,
            maximum=50.0,
        ),
    },
    "leo": {
        **_NODE_IDENTITY,
        **_altitude(
            "Circular-orbit altitude, km: low Earth orbit, 160 km (lower decays within days) "
            "to 2000 km.",
            160.0,
            2000.0,
        ),
        "closest_approach_s": _Key(
            "Time of the pass's closest approach to the origin, s; within 10^7 s (116 days) "
            "of round 0 (the orbit repeats every 1.5 to 2 hours).",
            required=True,
            minimum=-1e7,
            maximum=1e7,
        ),
        "track_offset_km": _Key(
            "Distance from the origin to the ground track, km; within a quarter of the "
            "Earth's circumference.",
            minimum=-_PLANE_KM,
            maximum=_PLANE_KM,
        ),
        "track_azimuth_deg": _Key(
            "Heading of the ground track, degrees clockwise from north, -360 to 360.",
            minimum=-360.0,
            maximum=360.0,
        ),
    },
    "leo-tle": {
        **_NODE_IDENTITY,
        "tle_file": _Key("TLE file (path relative to the topology file).", str, required=True),
        "tle_name": _Key("Name line of the satellite's TLE in it; defaults to the node's name.",
                         str),
    },
}
"""``[[nodes]]``: the keys each layer's nodes take (a LEO node with ``tle_file`` is
placed from a TLE: ``leo-tle``)."""

_TLE_SATELLITES_KEYS = {
    "file": _Key("TLE file whose every satellite becomes a LEO node named as in the file "
                 "(path relative to the topology file).", str, required=True),
}
"""``[[tle_satellites]]``: a TLE file that adds one LEO node per element set."""

_COMMON_LINK_KEYS = {
    "medium": _Key("Propagation medium.", str, required=True, choices=MEDIA),
    "raw_fidelity": _Key(
        "Werner fidelity of a freshly heralded pair; above 0.25 (maximally mixed).",
        required=True,
        minimum=0.25,
        maximum=1.0,
        strict=True,
        interval=True,
    ),
    "pair_rate_hz": _Key(
        "Generation attempts per second; delivered pairs per second are this times the "
        "heralding success probability. From 0.001 Hz to 10^12 Hz (beyond any source).",
        required=True,
        minimum=0.001,
        maximum=1e12,
    ),
    "memory_coherence_time_s": _Key(
        "Depolarising memory time constant T, s (§2.5): from 1 µs to 10^6 s (11.6 days; "
        "the best memories keep hours), or inf for a perfect memory.",
        required=True,
        minimum=1e-6,
        maximum=1e6,
        allow_inf=True,
    ),
    "max_range_km": _Key(
        "Longest link of this type, km: from 1 m to 10^5 km (past geostationary), or inf "
        "for unlimited.",
        required=True,
        minimum=0.001,
        maximum=1e5,
        allow_inf=True,
    ),
    "classical_rate_bps": _Key(
        "Classical data rate of one link, bit/s: from 1 bit/s to 1 Tbit/s.",
        required=True,
        minimum=1.0,
        maximum=1e12,
    ),
    "min_elevation_deg": _Key(
        "Elevation mask: no link to a node seen lower than this, degrees.",
        minimum=-90.0,
        maximum=90.0,
    ),
    "heralding": _Key("Entanglement-generation scheme (§2.7).", str, choices=HERALDING_SCHEMES),
    "extra_loss_db": _Key(
        "Fixed extra loss (pointing, turbulence margin), dB; at most 100 dB.",
        minimum=0.0,
        maximum=100.0,
    ),
}

_LINK_KEYS: dict[str, dict[str, _Key]] = {
    "fibre": {
        **_COMMON_LINK_KEYS,
        "attenuation_db_per_km": _Key(
            "Fibre attenuation alpha, dB/km (§2.6): 0.2 at 1550 nm; at most 10.",
            minimum=0.0,
            maximum=10.0,
        ),
    },
    "free-space": {
        **_COMMON_LINK_KEYS,
        "divergence_rad": _Key(
            "1/e² half-angle beam divergence, rad (§2.6): from 0.1 µrad (diffraction limit "
            "of a metre-class telescope) to 0.1 rad.",
            required=True,
            minimum=1e-7,
            maximum=0.1,
        ),
        "aperture_radius_m": _Key(
            "Receiver aperture radius, m: from 1 mm to 10 m (the largest telescopes).",
            required=True,
            minimum=0.001,
            maximum=10.0,
        ),
        "beam_waist_m": _Key("Beam waist at the transmitter, m; at most 10 m.", minimum=0.0,
                             maximum=10.0),
        "zenith_transmissivity": _Key(
            "Atmospheric transmissivity straight up (1: no slant atmosphere); at least 0.001 "
            "(30 dB, thick cloud).",
            minimum=0.001,
            maximum=1.0,
        ),
        "atmosphere_db_per_km": _Key(
            "Horizontal atmospheric loss over the whole distance, dB/km; at most 1000 (dense "
            "fog).",
            minimum=0.0,
            maximum=1000.0,
        ),
        "receiver_efficiency": _Key(
            "Receiver optics times detector efficiency: from 0.001 to 1.",
            minimum=0.001,
            maximum=1.0,
        ),
    },
}
"""``[links.<layer>-<layer>]``: the keys a link type takes, by medium."""

_DOCUMENT_KEYS = ("topology", "nodes", "tle_satellites", "links")


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


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
        self.check_keys(document, _DOCUMENT_KEYS, "top level")
        settings = self.table(document, "topology", "top level")
        self.check_keys(settings, tuple(_TOPOLOGY_KEYS), "[topology]")
        nodes = self.read_nodes(document)
        link_types = self.read_link_types(document)
        values = self.values(settings, _TOPOLOGY_KEYS, "[topology]")
        values.setdefault("name", Path(self.source).stem)
        if "epoch_utc" in values:
            try:
                epoch = parse_epoch_utc(values["epoch_utc"])
            except ValueError as error:
                raise self.fail(f"[topology] {error}") from None
        tle_nodes = [node for node in nodes if node.from_tle]
        if tle_nodes:
            missing = [key for key in ("latitude_deg", "longitude_deg", "epoch_utc")
                       if key not in values]
            if missing:
                raise self.fail(
                    f"node {tle_nodes[0].name!r} comes from a TLE, so [topology] needs "
                    f"{', '.join(missing)} (where the plane's origin is, and when time 0 is)"
                )
            for node in tle_nodes:
                if problem := epoch_gap_problem(node.tle_lines, epoch):
                    raise self.fail(f"node {node.name!r}: {problem}")
        return Topology(source=self.source, nodes=nodes, link_types=link_types, **values)

    def tle_nodes(self, document: dict[str, Any]) -> list[NodeSpec]:
        """One LEO node per element set of each ``[[tle_satellites]]`` file."""
        entries = document.get("tle_satellites", [])
        if not isinstance(entries, list):
            raise self.fail("tle_satellites must be an array of tables [[tle_satellites]]")
        nodes = []
        for position, entry in enumerate(entries):
            where = f"[[tle_satellites]] entry {position + 1}"
            if not isinstance(entry, dict):
                raise self.fail(f"{where} must be a table")
            self.check_keys(entry, tuple(_TLE_SATELLITES_KEYS), where)
            file = self.values(entry, _TLE_SATELLITES_KEYS, where)["file"]
            for tle in self.tles(file, where):
                nodes.append(NodeSpec(name=tle.name, layer="leo", tle_file=file,
                                      tle_name=tle.name, tle_lines=(tle.line1, tle.line2)))
        return nodes

    def tles(self, file: str, where: str) -> tuple[Tle, ...]:
        try:
            return read_tle_file(Path(self.source).parent / file)
        except ValueError as error:
            raise self.fail(f"{where} tle_file: {error}") from None

    def tle_node(self, values: dict[str, Any], where: str) -> NodeSpec:
        """A LEO node placed from the element set ``tle_name`` of its ``tle_file``."""
        wanted = values.setdefault("tle_name", values["name"])
        tles = self.tles(values["tle_file"], where)
        match = next((tle for tle in tles if tle.name == wanted), None)
        if match is None:
            names = ", ".join(tle.name for tle in tles[:8]) + (", ..." if len(tles) > 8 else "")
            raise self.fail(
                f"{where} tle_name {wanted!r} is not in TLE file {values['tle_file']!r}; "
                f"it holds {names}"
            )
        return NodeSpec(**values, tle_lines=(match.line1, match.line2))

    def read_nodes(self, document: dict[str, Any]) -> tuple[NodeSpec, ...]:
        entries = document.get("nodes")
        if not isinstance(entries, list) or not entries:
            raise self.fail("needs at least one [[nodes]] entry")
        nodes: list[NodeSpec] = []
        seen: set[str] = set()
        for position, entry in enumerate(entries + self.tle_nodes(document)):
            if isinstance(entry, NodeSpec):  # from [[tle_satellites]], checked already
                if entry.name in seen:
                    raise self.fail(f"node {entry.name!r} (from [[tle_satellites]]) is defined "
                                    "twice; node names must be unique")
                seen.add(entry.name)
                nodes.append(entry)
                continue
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
            layer = self.choice(entry.get("layer"), "layer", LAYERS, where)
            from_tle = layer == "leo" and "tle_file" in entry
            keys = _NODE_KEYS["leo-tle" if from_tle else layer]
            self.check_keys(entry, tuple(keys), f"{where} (layer {layer!r})")
            values = self.values(entry, keys, where)
            nodes.append(self.tle_node(values, where) if from_tle else NodeSpec(**values))
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
            medium = self.choice(entry.get("medium"), "medium", MEDIA, where)
            keys = _LINK_KEYS[medium]
            self.check_keys(entry, tuple(keys), f"{where} (medium {medium!r})")
            link_types.append(LinkType(name=name, layers=layers, **self.values(entry, keys, where)))
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

    def values(self, table: dict[str, Any], keys: Mapping[str, _Key], where: str) -> dict[str, Any]:
        """The checked value of every key of ``keys`` that ``table`` sets, in schema order."""
        values: dict[str, Any] = {}
        # Choices and flags before numbers, as the hand-written reader checked them, so
        # that an entry with several bad keys still reports the same one first.
        for key, spec in sorted(keys.items(), key=lambda item: item[1].kind is float):
            if key not in table:
                if spec.required:
                    raise self.fail(f"{where} is missing required key {key!r}")
                continue
            value = table[key]
            if spec.choices:
                values[key] = self.choice(value, key, spec.choices, where)
            elif spec.kind is bool:
                if not isinstance(value, bool):
                    raise self.fail(f"{where} key {key!r} must be true or false")
                values[key] = value
            elif spec.kind is str:
                if not isinstance(value, str):
                    raise self.fail(f"{where} {key} must be a string, got {value!r}")
                values[key] = value
            else:
                values[key] = self.number(value, key, spec, where)
        return values

    def choice(self, value: Any, key: str, choices: tuple[str, ...], where: str) -> str:
        if value not in choices:
            raise self.fail(f"{where} has unknown {key} {value!r}; allowed: {', '.join(choices)}")
        return value

    def number(self, value: Any, key: str, spec: _Key, where: str) -> float:
        """``value`` as a float in the range ``spec`` allows."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{where} key {key!r} must be a number, got {value!r}")
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not spec.allow_inf):
            raise self.fail(f"{where} key {key!r} must be a finite number, got {value!r}")
        if (math.isinf(value) and value > 0) or (spec.allow_zero and value == 0.0):
            return value
        minimum, maximum = spec.minimum, spec.maximum
        too_low = minimum is not None and (value <= minimum if spec.strict else value < minimum)
        too_high = maximum is not None and value > maximum
        if not (too_low or too_high):
            return value
        if spec.interval:
            low = f"{'(' if spec.strict else '['}{minimum:g}"
            raise self.fail(f"{where} {key} = {value!r} is outside {low}, {maximum:g}]")
        raise self.fail(
            f"{where} key {key!r} = {value!r} is not allowed; must be {spec.allowed()} "
            f"({spec.help.rstrip('.')})"
        )
