"""Satellites from TLEs: positions against sgp4/skyfield directly, time-continuous links,
and the topology-file keys that place them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skyfield.api import EarthSatellite, load, wgs84

from relay.topology_file import DEFAULT_TOPOLOGY_PATH, load_topology

TOPOLOGIES = Path(__file__).resolve().parents[1] / "relay" / "topologies"
LEO_10 = TOPOLOGIES / "sagin-leo-10.toml"


@pytest.fixture(scope="module")
def leo10():
    return load_topology(LEO_10)


def test_tle_positions_agree_with_skyfield(leo10):
    timescale = load.timescale(builtin=True)
    station = wgs84.latlon(leo10.latitude_deg, leo10.longitude_deg, 25.0)  # bs at 25 m
    origin = wgs84.latlon(leo10.latitude_deg, leo10.longitude_deg, 0.0)
    times = np.array([0.0, 1234.5, 3600.0, 7777.0, 20_000.0])
    enu = leo10.satellite_enu_km(times)
    tle_nodes = [node for node in leo10.nodes if node.from_tle]
    for column, node in enumerate(tle_nodes):
        satellite = EarthSatellite(*node.tle_lines, node.name, timescale)
        for row, t_s in enumerate(times):
            moment = timescale.utc(2026, 3, 1, 0, 0, t_s)
            # Skyfield's own route: TEME -> GCRS -> topocentric, no shortcuts of ours.
            difference = (satellite - origin).at(moment)
            north, east, up = difference.frame_xyz(origin).km  # skyfield: north, east, up
            expected_enu = np.array([east, north, up])
            assert np.linalg.norm(enu[row, column] - expected_enu) < 1.0
            altitude, _, distance = (satellite - station).at(moment).altaz()
            positions = leo10.positions_at(float(t_s))
            from relay import physics

            index = [n.name for n in leo10.nodes].index(node.name)
            sat = np.array([positions.east_km[index], positions.north_km[index],
                            positions.up_km[index]])
            got_range, got_elevation = physics.enu_range_and_elevation(sat, 0.0, 0.0, 0.025)
            assert abs(float(got_elevation) - altitude.degrees) < 0.1
            assert abs(float(got_range) - distance.km) < 1.0


def test_links_at_round_starts_equal_links_for_round(leo10):
    for topology in (load_topology(DEFAULT_TOPOLOGY_PATH), leo10):
        for server_round in (0, 3, 17):
            by_round = topology.links_for_round(server_round, seed=4)
            at_time = topology.links_at(server_round * topology.round_duration_s, seed=4)
            assert dict(by_round) == dict(at_time)


def test_links_at_between_rounds_moves_satellites(leo10):
    uav = "uav-6"  # beyond the HAP: a satellite or nothing
    paths = {t: leo10.links_at(t)[uav] for t in np.arange(0.0, 2400.0, 20.0)}
    assert any(link is None for link in paths.values())
    relayed = [link for link in paths.values() if link is not None]
    assert relayed and all(link.path[1].startswith("WALKER-") for link in relayed)
    with pytest.raises(ValueError, match="time_s must be a finite number >= 0"):
        leo10.links_at(-1.0)


def test_loading_a_tle_topology_imports_neither_sgp4_nor_skyfield():
    code = (
        "import sys; from relay.topology_file import load_topology; "
        f"load_topology({str(LEO_10)!r}); "
        "print(any(m.split('.')[0] in ('sgp4', 'skyfield') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def _write(tmp_path: Path, topology_extra: str = "", node: str = "", tle: str | None = None
           ) -> Path:
    text = LEO_10.read_text()
    if tle is not None:
        (tmp_path / "sats.tle").write_text(tle)
        text = text.replace('file = "walker-leo.tle"', 'file = "sats.tle"')
    else:
        (tmp_path / "walker-leo.tle").write_text((TOPOLOGIES / "walker-leo.tle").read_text())
    text = text.replace('epoch_utc = "2026-03-01T00:00:00Z"\n',
                        'epoch_utc = "2026-03-01T00:00:00Z"\n' + topology_extra)
    path = tmp_path / "t.toml"
    path.write_text(text.replace("# ---------------------------------------------------------"
                                 "------------------- ground", node, 1))
    return path


@pytest.mark.parametrize(("old", "new", "message"), [
    ("latitude_deg = 45.0", "latitude_deg = 91.0",
     r"\[topology\] key 'latitude_deg' = 91.0 is not allowed; must be from -90 to 90"),
    ("longitude_deg = 7.0", "longitude_deg = -200.0",
     r"key 'longitude_deg' = -200.0 is not allowed; must be from -180 to 180"),
    ('epoch_utc = "2026-03-01T00:00:00Z"', 'epoch_utc = "yesterday"',
     r"epoch_utc = 'yesterday' is not an ISO 8601 time"),
    ('epoch_utc = "2026-03-01T00:00:00Z"', 'epoch_utc = "2026-06-01T00:00:00Z"',
     r"node 'WALKER-0': its TLE epoch \(2026-03-01 00:00\) is 92.0 days from epoch_utc"),
    ("latitude_deg = 45.0", "# latitude_deg = 45.0",
     r"comes from a TLE, so \[topology\] needs latitude_deg"),
])
def test_bad_topology_values_are_refused_in_one_line(tmp_path, old, new, message):
    path = _write(tmp_path)
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(ValueError, match=message) as error:
        load_topology(path)
    assert "\n" not in str(error.value)


def test_bad_tle_files_name_the_file_and_line(tmp_path):
    lines = (TOPOLOGIES / "walker-leo.tle").read_text().splitlines()
    broken = list(lines)
    broken[4] = broken[4][:-1] + str((int(broken[4][-1]) + 1) % 10)
    path = _write(tmp_path, tle="\n".join(broken) + "\n")
    with pytest.raises(ValueError, match=r"TLE file '.*sats.tle' line 5: checksum is \d but"):
        load_topology(path)
    path = _write(tmp_path, tle="\n".join(lines[:5]) + "\n")
    with pytest.raises(ValueError, match=r"line 5: line 1 has no line 2 after it"):
        load_topology(path)
    path.write_text(path.read_text().replace('file = "sats.tle"', 'file = "missing.tle"'))
    with pytest.raises(ValueError, match=r"TLE file '.*missing.tle': cannot be read"):
        load_topology(path)


def test_a_leo_node_from_a_named_tle(tmp_path):
    node = ('[[nodes]]\nname = "my-sat"\nlayer = "leo"\ntle_file = "walker-leo.tle"\n'
            'tle_name = "WALKER-3"\n\n')
    topology = load_topology(_write(tmp_path, node=node))
    spec = next(n for n in topology.nodes if n.name == "my-sat")
    walker = next(n for n in topology.nodes if n.name == "WALKER-3")
    assert spec.tle_lines == walker.tle_lines
    enu = topology.satellite_enu_km(600.0)[0]
    names = topology.tle_satellites
    assert np.array_equal(enu[names.index("my-sat")], enu[names.index("WALKER-3")])
    bad = _write(tmp_path, node=node.replace("WALKER-3", "NOPE"))
    with pytest.raises(ValueError, match=r"tle_name 'NOPE' is not in TLE file 'walker-leo.tle'"):
        load_topology(bad)
    bad = _write(tmp_path, node=node.replace('tle_name = "WALKER-3"\n', 'altitude_km = 550.0\n'))
    with pytest.raises(ValueError, match=r"has unknown key 'altitude_km'"):
        load_topology(bad)


def test_swarm_keeps_tle_satellites(tmp_path):
    from relay.swarm import write_swarm

    path = write_swarm(tmp_path / "swarm.toml", 30, radius_km=80.0, template=LEO_10)
    swarm = load_topology(path)
    assert swarm.tle_satellites == load_topology(LEO_10).tle_satellites
    assert len(swarm.uav_ids) == 30


def test_swarm_draws_train_times_within_the_templates_range(tmp_path):
    from relay.swarm import swarm_document
    from relay.topology_file import DEFAULT_TOPOLOGY_PATH

    template = [node["train_s"] for node in _nodes(LEO_10) if node["layer"] == "uav"]
    document = swarm_document(200, radius_km=80.0, seed=3, template=LEO_10)
    drawn = [node["train_s"] for node in document["nodes"] if node["layer"] == "uav"]
    assert min(template) <= min(drawn) < max(drawn) <= max(template)
    assert len(set(drawn)) > 50  # spread, not one value
    assert document == swarm_document(200, radius_km=80.0, seed=3, template=LEO_10)
    # a template without train_s places its swarm as before, with no train_s
    lines = DEFAULT_TOPOLOGY_PATH.read_text(encoding="utf-8").splitlines(keepends=True)
    without = tmp_path / "no-compute.toml"
    without.write_text("".join(line for line in lines if not line.startswith("train_s")))
    plain = swarm_document(20, seed=3, template=without)
    assert not any("train_s" in node for node in plain["nodes"])
    timed = swarm_document(20, seed=3)
    assert [n.get("x_km") for n in timed["nodes"]] == [n.get("x_km") for n in plain["nodes"]]


def test_shipped_leo_topologies_have_heterogeneous_compute():
    for name in ("sagin-leo-10.toml", "sagin-leo-100.toml"):
        topology = load_topology(TOPOLOGIES / name)
        seconds = [topology.train_seconds(uav) for uav in topology.uav_ids]
        assert 20.0 <= min(seconds) < 40.0 and 90.0 < max(seconds) <= 110.0, name


def _nodes(path):
    import tomllib

    return tomllib.loads(path.read_text(encoding="utf-8"))["nodes"]
