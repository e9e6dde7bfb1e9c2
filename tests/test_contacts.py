"""The contact plan: windows against skyfield's elevation crossings and against links_at."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from skyfield.api import EarthSatellite, load, wgs84

from relay.contacts import ContactPlan
from relay.topology_file import DEFAULT_TOPOLOGY_PATH, load_topology

LEO_10 = Path(__file__).resolve().parents[1] / "relay" / "topologies" / "sagin-leo-10.toml"
HORIZON_S = 2400.0


@pytest.fixture(scope="module")
def topology():
    return load_topology(LEO_10)


@pytest.fixture(scope="module")
def plan(topology):
    return ContactPlan.compute(topology, HORIZON_S, seed=0, step_s=30.0, tolerance_s=0.1)


def _crossing(satellite, station, timescale, low_s, high_s, mask_deg):
    """Time the satellite's elevation crosses ``mask_deg`` in [low_s, high_s], by skyfield."""
    def elevation(t_s):
        moment = timescale.utc(2026, 3, 1, 0, 0, t_s)
        return (satellite - station).at(moment).altaz()[0].degrees - mask_deg

    rising = elevation(low_s) < 0
    for _ in range(40):
        middle = 0.5 * (low_s + high_s)
        if (elevation(middle) < 0) == rising:
            low_s = middle
        else:
            high_s = middle
    return 0.5 * (low_s + high_s)


def test_satellite_passes_open_and_close_at_the_elevation_mask(topology, plan):
    timescale = load.timescale(builtin=True)
    station = wgs84.latlon(topology.latitude_deg, topology.longitude_deg, 25.0)
    mask = next(link for link in topology.link_types
                if link.layers == frozenset(("leo", "ground"))).min_elevation_deg
    checked = 0
    for name in plan.satellites:
        node = next(n for n in topology.nodes if n.name == name)
        satellite = EarthSatellite(*node.tle_lines, name, timescale)
        for open_s, close_s in plan.windows(name):
            if open_s > 0.0:
                assert abs(open_s - _crossing(satellite, station, timescale, open_s - 60,
                                              open_s + 5, mask)) < 1.0
                checked += 1
            if close_s < HORIZON_S:
                assert abs(close_s - _crossing(satellite, station, timescale, close_s - 5,
                                               close_s + 60, mask)) < 1.0
                checked += 1
    assert checked >= 2


@pytest.mark.slow
def test_windows_agree_with_links_at(topology, plan):
    for uav in plan.uav_ids:
        for t_s in np.arange(0.0, HORIZON_S, 37.0):
            assert plan.in_contact(uav, float(t_s)) == (topology.links_at(float(t_s))[uav]
                                                        is not None), (uav, t_s)
    for uav in ("uav-6", "uav-9"):
        windows = plan.windows(uav)
        assert len(windows) >= 2  # passes and gaps
        for open_s, close_s in windows:
            assert topology.links_at(open_s)[uav] is not None
            assert topology.links_at(close_s)[uav] is not None
            if open_s > 0.0:
                assert topology.links_at(open_s - 0.15)[uav] is None
            assert plan.via_at(uav, 0.5 * (open_s + close_s))[0].startswith("WALKER-")


def test_queries(plan):
    assert plan.windows("uav-0") == [(0.0, HORIZON_S)]
    first_open, first_close = plan.windows("uav-6")[0]
    second_open = plan.windows("uav-6")[1][0]
    assert plan.next_contact("uav-6", 0.0) == first_open
    assert plan.next_contact("uav-6", first_open + 1.0) == first_open + 1.0
    assert plan.next_contact("uav-6", first_close + 1.0) == second_open
    assert plan.next_contact("uav-6", HORIZON_S + 1.0) is None
    assert not plan.in_contact("uav-6", first_close + 1.0)
    with pytest.raises(KeyError, match="'nope' is neither a UAV nor a satellite"):
        plan.windows("nope")


def test_contacts_csv(plan, tmp_path):
    path = plan.write_csv(tmp_path / "contacts.csv")
    rows = list(csv.DictReader(path.open()))
    assert set(rows[0]) == {"node", "kind", "open_s", "close_s", "duration_s", "via"}
    assert {row["kind"] for row in rows} == {"uav", "satellite"}
    six = [row for row in rows if row["node"] == "uav-6"]
    assert len(six) == len(plan.windows("uav-6")) and six[0]["via"].startswith("WALKER-")


def test_circular_orbits_and_plot(tmp_path):
    from task.plots import plot_contacts

    topology = load_topology(DEFAULT_TOPOLOGY_PATH)
    plan = ContactPlan.compute(topology, 900.0, step_s=30.0, tolerance_s=0.5)
    assert set(plan.satellites) == {"leo-0", "leo-1"}
    for t_s in (0.0, 100.0, 450.0, 800.0):
        for uav in plan.uav_ids:
            assert plan.in_contact(uav, t_s) == (topology.links_at(t_s)[uav] is not None)
    plot_contacts(plan, tmp_path / "contacts.png")
    assert (tmp_path / "contacts.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="horizon_s must be a finite number > 0"):
        ContactPlan.compute(topology, 0.0)
