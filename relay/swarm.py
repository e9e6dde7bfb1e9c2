"""A SAGIN topology with a swarm of N UAVs, for scale studies and large simulations.

``python -m relay.swarm --uavs 1000 --out swarm.toml`` keeps every non-UAV node (base
station, HAPs, LEO satellites) and every link type of a template topology (default: the
shipped one) and replaces its UAVs by ``N`` UAVs spread uniformly over a disc around the
base station, with patrol radii and speeds drawn from the template UAVs' ranges (and
local-training times ``train_s``, when the template's UAVs have them). The
file it writes is an ordinary topology file: ``--run-config "topology='swarm.toml'"``.
Satellites from TLEs are kept (``tle_file`` nodes and ``[[tle_satellites]]``), their
files named relative to the new file.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relay.topology_file import DEFAULT_TOPOLOGY_PATH, load_topology

DEFAULT_RADIUS_KM = 5.0
"""Disc radius: inside the default uav-ground range (6 km), so every UAV has a path."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {value!r} to a topology file")


def _table(header: str, values: Mapping[str, Any]) -> str:
    lines = [header] + [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines)


def swarm_document(
    n_uavs: int, radius_km: float = DEFAULT_RADIUS_KM, seed: int = 0,
    template: str | Path = DEFAULT_TOPOLOGY_PATH,
) -> dict[str, Any]:
    """The template's topology document with its UAVs replaced by ``n_uavs`` new ones.

    Parameters
    ----------
    n_uavs : int
        Number of UAVs, >= 1; named ``uav-0`` .. ``uav-<n-1>`` (partition ``i`` is
        ``uav-i``).
    radius_km : float
        UAVs start uniformly in a disc of this radius around the base station.
    seed : int
        Seed of the placement.
    template : str or Path
        Topology file whose other nodes and link types are kept.
    """
    if isinstance(n_uavs, bool) or not isinstance(n_uavs, int) or n_uavs < 1:
        raise ValueError(f"n_uavs must be an integer >= 1, got {n_uavs!r}")
    if not math.isfinite(radius_km) or radius_km <= 0:
        raise ValueError(f"radius_km must be a number > 0, got {radius_km!r}")
    load_topology(template)  # one clear error for a bad template, before anything else
    document = tomllib.loads(Path(template).read_text(encoding="utf-8"))
    uavs = [node for node in document["nodes"] if node["layer"] == "uav"]
    others = [node for node in document["nodes"] if node["layer"] != "uav"]
    base = next(node for node in others if node.get("base_station"))
    rng = np.random.default_rng(seed)
    distance = radius_km * np.sqrt(rng.random(n_uavs))
    bearing = rng.uniform(0.0, 2 * math.pi, n_uavs)

    def spread(key: str, fallback: float) -> np.ndarray:
        values = [float(node.get(key, fallback)) for node in uavs] or [fallback]
        return rng.uniform(min(values), max(values), n_uavs)

    altitude = spread("altitude_km", 0.15)
    patrol = spread("patrol_radius_km", 1.0)
    speed = spread("speed_km_s", 0.02)
    # Drawn last and only when the template has any, so that templates without train_s
    # place their swarms exactly as before.
    timed = [float(node["train_s"]) for node in uavs if float(node.get("train_s", 0.0)) > 0]
    train = rng.uniform(min(timed), max(timed), n_uavs) if timed else None
    new_uavs = [
        {
            "name": f"uav-{index}",
            "layer": "uav",
            "x_km": round(float(base["x_km"] + distance[index] * math.cos(bearing[index])), 4),
            "y_km": round(float(base["y_km"] + distance[index] * math.sin(bearing[index])), 4),
            "altitude_km": round(float(altitude[index]), 4),
            "patrol_radius_km": round(float(patrol[index]), 4),
            "speed_km_s": round(float(speed[index]), 5),
            **({"train_s": round(float(train[index]), 1)} if train is not None else {}),
        }
        for index in range(n_uavs)
    ]
    topology = {**document.get("topology", {})}
    topology["name"] = f"{topology.get('name', 'sagin')}-swarm-{n_uavs}"
    # TLE files are named relative to the template: keep them absolute until written.
    folder = Path(template).resolve().parent
    others = [{**node, "tle_file": str(folder / node["tle_file"])} if "tle_file" in node
              else node for node in others]
    tle_sets = [{**entry, "file": str(folder / entry["file"])}
                for entry in document.get("tle_satellites", [])]
    return {"topology": topology, "nodes": others + new_uavs, "links": document["links"],
            **({"tle_satellites": tle_sets} if tle_sets else {})}


def write_topology(path: str | Path, document: Mapping[str, Any], comment: str = "") -> Path:
    """Write a topology document (``topology``, ``nodes``, ``links``) as a topology file.

    The file is checked with :func:`relay.topology_file.load_topology` before it replaces
    ``path``; a document that breaks the schema raises its ``ValueError`` and leaves
    nothing behind.
    """
    path = Path(path)
    parts = [f"# {comment}"] if comment else []
    parts.append(_table("[topology]", document["topology"]))
    parts += [_table("[[nodes]]", _relative(node, "tle_file", path))
              for node in document["nodes"]]
    parts += [_table("[[tle_satellites]]", _relative(entry, "file", path))
              for entry in document.get("tle_satellites", [])]
    parts += [_table(f"[links.{name}]", link) for name, link in document["links"].items()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    try:
        load_topology(tmp)
    except ValueError:
        tmp.unlink()
        raise
    tmp.replace(path)
    return path


def _relative(table: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    """``table`` with its absolute file ``key`` made relative to the folder of the topology
    file ``path`` (a topology file names its TLE files relative to itself)."""
    if key not in table or not Path(table[key]).is_absolute():
        return table  # a relative name is relative to the file already
    folder = path.resolve().parent
    return {**table, key: os.path.relpath(Path(table[key]).resolve(), folder)}


def write_swarm(path: str | Path, n_uavs: int, radius_km: float = DEFAULT_RADIUS_KM,
                seed: int = 0, template: str | Path = DEFAULT_TOPOLOGY_PATH) -> Path:
    """Write :func:`swarm_document` as a topology file and check it loads."""
    return write_topology(
        path,
        swarm_document(n_uavs, radius_km, seed, template),
        f"{n_uavs} UAVs in a {radius_km} km disc around the base station (seed {seed}), other "
        f"nodes and link types from {Path(template).name}; made by relay.swarm.",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write a swarm topology file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uavs", type=int, required=True, help="number of UAVs (>= 1)")
    parser.add_argument("--out", type=Path, required=True, help="topology file to write")
    parser.add_argument("--radius-km", type=float, default=DEFAULT_RADIUS_KM,
                        help=f"disc radius around the base station (default {DEFAULT_RADIUS_KM})")
    parser.add_argument("--seed", type=int, default=0, help="placement seed (default 0)")
    parser.add_argument("--template", type=Path, default=DEFAULT_TOPOLOGY_PATH,
                        help="topology whose other nodes and link types are kept")
    args = parser.parse_args(argv)
    try:
        path = write_swarm(args.out, args.uavs, args.radius_km, args.seed, args.template)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {path} ({args.uavs} UAVs)")


if __name__ == "__main__":
    main()
