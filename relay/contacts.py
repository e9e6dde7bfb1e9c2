"""The contact plan of a run: when each UAV has a path to the base station, and through what.

With satellites on real orbits (:mod:`relay.tle`) a UAV beyond the air relays reaches
the base station only while a satellite is above the elevation masks of both: contact
windows of minutes, gaps of tens of minutes. :meth:`ContactPlan.compute` finds every
window over ``[0, horizon_s]`` once per run: it samples the network every ``step_s``
(the tree of best paths for all UAVs at once, :class:`relay.path_tree.PathTree`), then
refines every window edge by bisection to ``tolerance_s``, all the edges that fall
between the same two samples together. A path counts by the rules of
:meth:`relay.topology.Topology.links_at`: every hop in range and above its elevation
mask, the best path's end-to-end fidelity at least ``min_end_to_end_fidelity`` and its
pair rate at least :data:`~relay.topology_spec.MIN_PAIR_RATE_HZ`. A window shorter
than ``step_s`` that opens and closes between two samples can be missed.

``python -m relay.contacts relay/topologies/sagin-leo-10.toml --horizon-s 6000``
prints the windows and writes ``contacts.csv``.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from relay import physics
from relay.physics.timing import EXACT_MAX_LINKS
from relay.routing import Positions, hop_physics
from relay.topology import Topology
from relay.topology_spec import MIN_PAIR_RATE_HZ

RELAY_LAYERS = ("hap", "leo")
"""Layers whose nodes a window's ``via`` names (UAV-to-UAV hops are not listed)."""


@dataclass(frozen=True)
class Window:
    """One contact window of a UAV (a path to the base station) or a satellite (in view).

    Attributes
    ----------
    open_s, close_s : float
        First and last emulated time of the window known to be in contact, s
        (within ``tolerance_s`` of the true edges; a window open at the start of the
        plan opens at 0, one open at its end closes at ``horizon_s``).
    via : tuple of str
        For a UAV, the HAPs and satellites its path runs through at the samples of the
        window, in order of first use (empty for a direct or UAV-relayed path; a window
        shorter than the sampling step lists the relays at its refined edge).
    """

    open_s: float
    close_s: float
    via: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        """``close_s - open_s``."""
        return self.close_s - self.open_s


class ContactPlan:
    """Contact windows of every UAV and every satellite over ``[0, horizon_s]``.

    Build one with :meth:`compute`. Windows of a node are sorted and disjoint.
    """

    def __init__(self, horizon_s: float, uav_windows: dict[str, tuple[Window, ...]],
                 satellite_windows: dict[str, tuple[Window, ...]]) -> None:
        self.horizon_s = float(horizon_s)
        self.uav_windows = uav_windows
        self.satellite_windows = satellite_windows

    @classmethod
    def compute(cls, topology: Topology, horizon_s: float, seed: int = 0,
                step_s: float = 30.0, tolerance_s: float = 0.1) -> ContactPlan:
        """The contact plan of ``topology`` with mobility seed ``seed``.

        Parameters
        ----------
        topology : Topology
            The run's topology (circular-orbit satellites work as well as TLE ones).
        horizon_s : float
            End of the plan, emulated s (> 0; e.g. rounds times ``round_duration_s``).
        seed : int
            Mobility seed of the run (>= 0).
        step_s : float
            Sampling step, s (> 0): windows shorter than this may be missed.
        tolerance_s : float
            Bisection stops when a window edge is known this closely, s (> 0).

        Returns
        -------
        ContactPlan
        """
        for name, value in (("horizon_s", horizon_s), ("step_s", step_s),
                            ("tolerance_s", tolerance_s)):
            if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        return _Planner(topology, seed).plan(float(horizon_s), float(step_s), float(tolerance_s))

    @property
    def uav_ids(self) -> tuple[str, ...]:
        """UAV names, in topology order."""
        return tuple(self.uav_windows)

    @property
    def satellites(self) -> tuple[str, ...]:
        """Satellite names, in topology order."""
        return tuple(self.satellite_windows)

    def windows(self, node: str) -> list[tuple[float, float]]:
        """``(open_s, close_s)`` of each window of a UAV (path) or satellite (in view).

        Raises
        ------
        KeyError
            ``node`` is neither a UAV nor a satellite of the plan.
        """
        return [(window.open_s, window.close_s) for window in self._windows(node)]

    def in_contact(self, uav_id: str, t_s: float) -> bool:
        """Whether ``uav_id`` (or a satellite) has its path (is in view) at ``t_s``."""
        return self.window_at(uav_id, t_s) is not None

    def next_contact(self, uav_id: str, t_s: float) -> float | None:
        """The first time from ``t_s`` on that ``uav_id`` is in contact: ``t_s`` itself if
        it is, the next window's opening otherwise, ``None`` if none opens before the
        plan's horizon."""
        for window in self._windows(uav_id):
            if window.close_s >= t_s:
                return max(window.open_s, float(t_s))
        return None

    def window_at(self, node: str, t_s: float) -> Window | None:
        """The window of ``node`` that contains ``t_s``, or ``None``."""
        windows = self._windows(node)
        index = bisect.bisect_right([window.open_s for window in windows], t_s) - 1
        if index >= 0 and t_s <= windows[index].close_s:
            return windows[index]
        return None

    def via_at(self, uav_id: str, t_s: float) -> tuple[str, ...] | None:
        """The HAPs and satellites of the window ``uav_id`` is in at ``t_s`` (``None``: no
        path then). For the exact path at ``t_s`` use ``topology.links_at(t_s, seed)``."""
        window = self.window_at(uav_id, t_s)
        return None if window is None else window.via

    def rows(self) -> list[dict[str, object]]:
        """One row per window: ``node, kind, open_s, close_s, duration_s, via``."""
        rows: list[dict[str, object]] = []
        for kind, table in (("uav", self.uav_windows), ("satellite", self.satellite_windows)):
            for node, windows in table.items():
                rows += [{"node": node, "kind": kind, "open_s": round(window.open_s, 3),
                          "close_s": round(window.close_s, 3),
                          "duration_s": round(window.duration_s, 3),
                          "via": "+".join(window.via)} for window in windows]
        return rows

    def write_csv(self, path: str | Path) -> Path:
        """Write :meth:`rows` as CSV (``contacts.csv``); a node without windows has no row."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["node", "kind", "open_s", "close_s",
                                             "duration_s", "via"])
            writer.writeheader()
            writer.writerows(self.rows())
        tmp.replace(path)
        return path

    def _windows(self, node: str) -> tuple[Window, ...]:
        if node in self.uav_windows:
            return self.uav_windows[node]
        if node in self.satellite_windows:
            return self.satellite_windows[node]
        raise KeyError(f"{node!r} is neither a UAV nor a satellite of this contact plan")


class _Planner:
    """Samples one topology and seed: which UAVs have a usable path, which satellites
    the base station sees, at any time."""

    def __init__(self, topology: Topology, seed: int) -> None:
        self.topology = topology
        self.seed = seed
        nodes = topology.nodes
        self.uavs = np.array([i for i, node in enumerate(nodes) if node.layer == "uav"])
        self.satellites = np.array([i for i, node in enumerate(nodes) if node.layer == "leo"],
                                   dtype=np.intp)
        self.source = next(i for i, node in enumerate(nodes) if node.base_station)
        self.relay = np.array([node.layer in RELAY_LAYERS for node in nodes])
        self.link_by_layers = {link.layers: link for link in topology.link_types}
        self.sky = self.link_by_layers.get(frozenset((nodes[self.source].layer, "leo")))

    def plan(self, horizon_s: float, step_s: float, tolerance_s: float) -> ContactPlan:
        times = np.append(np.arange(0.0, horizon_s, step_s), horizon_s)
        enu = self.topology.satellite_enu_km(times)
        samples = [self.state(float(t), enu[index]) for index, t in enumerate(times)]
        status = np.array([sample[0] for sample in samples])
        edges: list[list[tuple[float, bool]]] = [[] for _ in range(status.shape[1])]
        for index in np.flatnonzero(np.any(status[1:] != status[:-1], axis=1)):
            self.refine(float(times[index]), status[index], float(times[index + 1]),
                        status[index + 1], status[index] != status[index + 1], tolerance_s,
                        edges)
        names = [self.topology.nodes[i].name for i in np.concatenate([self.uavs,
                                                                        self.satellites])]
        table: dict[str, tuple[Window, ...]] = {}
        for column, name in enumerate(names):
            table[name] = self.windows(column, times, status, samples, edges[column], horizon_s)
        count = len(self.uavs)
        return ContactPlan(horizon_s, {name: table[name] for name in names[:count]},
                           {name: table[name] for name in names[count:]})

    def windows(self, column: int, times: npt.NDArray[np.float64], status: npt.NDArray[np.bool_],
                samples: list[tuple[npt.NDArray[np.bool_], list[tuple[str, ...]]]],
                edges: list[tuple[float, bool]], horizon_s: float) -> tuple[Window, ...]:
        events = sorted(edges)
        openings = [0.0] if status[0, column] else []
        closings: list[float] = []
        for moment, opens in events:
            (openings if opens else closings).append(moment)
        if status[-1, column]:
            closings.append(horizon_s)
        windows = []
        for open_s, close_s in zip(openings, closings, strict=False):
            via: list[str] = []
            if column < len(self.uavs):
                inside = (times >= open_s) & (times <= close_s)
                picks = np.flatnonzero(inside) if inside.any() else [
                    int(np.argmin(np.abs(times - open_s)))]
                for index in picks:
                    via += [name for name in samples[index][1][column] if name not in via]
            windows.append(Window(open_s, close_s, tuple(via)))
        return tuple(windows)

    def refine(self, low: float, low_state: npt.NDArray[np.bool_], high: float,
               high_state: npt.NDArray[np.bool_], changing: npt.NDArray[np.bool_],
               tolerance_s: float, edges: list[list[tuple[float, bool]]]) -> None:
        """Bisect ``[low, high]`` for the edges of the ``changing`` columns, all at once."""
        if high - low <= tolerance_s:
            for column in np.flatnonzero(changing):
                opens = bool(high_state[column])
                edges[column].append((high if opens else low, opens))
            return
        middle = 0.5 * (low + high)
        middle_state = self.state(middle)[0]
        for (a, a_state, b, b_state) in ((low, low_state, middle, middle_state),
                                         (middle, middle_state, high, high_state)):
            sub = changing & (a_state != b_state)
            if sub.any():
                self.refine(a, a_state, b, b_state, sub, tolerance_s, edges)

    def state(self, time_s: float, enu: npt.NDArray[np.float64] | None = None
              ) -> tuple[npt.NDArray[np.bool_], list[tuple[str, ...]]]:
        """Which UAVs have a usable path and which satellites are in view at ``time_s``
        (one row: UAVs, then satellites), and each UAV's HAPs and satellites."""
        topology = self.topology
        if enu is not None and enu.shape[0] == 0:
            enu = None
        positions = topology.positions_at(time_s, self.seed, enu)
        parents = topology.path_tree(positions, None).parents()
        usable, relays = self.usable_paths(positions, parents)
        visible = np.zeros(len(self.satellites), dtype=bool)
        if self.sky is not None and len(self.satellites):
            first = np.minimum(self.source, self.satellites)
            second = np.maximum(self.source, self.satellites)
            hops = hop_physics(self.sky, positions, first, second)
            seen = np.where(hops["first"] == self.source, hops["second"], hops["first"])
            visible = np.isin(self.satellites, seen)
        return np.concatenate([usable, visible]), relays

    def usable_paths(self, positions: Positions, parents: npt.NDArray[np.intp]
                     ) -> tuple[npt.NDArray[np.bool_], list[tuple[str, ...]]]:
        """Whether each UAV's best path passes the thresholds of
        :meth:`relay.topology.Topology.links_at`, computed as there, over arrays."""
        nodes = self.topology.nodes
        paths = []
        for uav in self.uavs:
            path = [int(uav)]
            while path[-1] != self.source and parents[path[-1]] >= 0:
                path.append(int(parents[path[-1]]))
            paths.append(path if path[-1] == self.source and len(path) > 1 else [])
        # Every hop of the tree once: its pair rate, raw fidelity and memory time.
        hop_figures: dict[tuple[int, int], tuple[float, float, float]] = {}
        pairs = {(min(a, b), max(a, b)) for path in paths for a, b in itertools.pairwise(path)}
        by_type: dict[frozenset[str], list[tuple[int, int]]] = {}
        for pair in pairs:
            by_type.setdefault(frozenset((nodes[pair[0]].layer, nodes[pair[1]].layer)),
                               []).append(pair)
        for layers, members in by_type.items():
            link_type = self.link_by_layers[layers]
            first = np.array([pair[0] for pair in members], dtype=np.intp)
            second = np.array([pair[1] for pair in members], dtype=np.intp)
            columns = hop_physics(link_type, positions, first, second)
            for a, b, rate in zip(columns["first"], columns["second"], columns["pair_rate_hz"],
                                  strict=True):
                hop_figures[(int(a), int(b))] = (float(rate), link_type.raw_fidelity,
                                                 link_type.memory_coherence_time_s)
        usable = np.zeros(len(self.uavs), dtype=bool)
        by_length: dict[int, list[int]] = {}
        for index, path in enumerate(paths):
            if path:
                by_length.setdefault(len(path) - 1, []).append(index)
        for same_length in by_length.values():
            figures = np.array([[hop_figures[(min(a, b), max(a, b))]
                                 for a, b in itertools.pairwise(paths[i])] for i in same_length])
            usable[same_length] = self.passes(figures[..., 0], figures[..., 1], figures[..., 2])
        relays = [tuple(nodes[i].name for i in path if self.relay[i]) for path in paths]
        return usable, relays

    def passes(self, rates: npt.NDArray[np.float64], raw: npt.NDArray[np.float64],
               memory_s: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """:meth:`relay.topology.Topology._evaluate_path`'s thresholds for paths of equal
        length, one per row (hops along the last axis)."""
        topology = self.topology
        links = rates.shape[1]
        if links <= EXACT_MAX_LINKS:
            masks = np.arange(1, 2**links)
            members = (masks[:, None] >> np.arange(links)) & 1
            signs = np.where(members.sum(axis=1) % 2 == 1, 1.0, -1.0)
            ready = np.sum(signs / (rates @ members.T), axis=1)
        else:
            ready = np.array([physics.expected_max_waiting_time_s(row) for row in rates])
        memory_wait = np.maximum(ready[:, None] - 1.0 / rates, 0.0)
        fidelity = physics.swap_chain_fidelity(
            physics.memory_decoherence(raw, memory_wait, memory_s),
            gate_fidelity=topology.swap_gate_fidelity,
            measurement_fidelity=topology.swap_measurement_fidelity,
        )
        swap_success = topology.swap_success_probability ** (links - 1)
        with np.errstate(divide="ignore"):
            pair_rate = swap_success / ready if swap_success > 0.0 else np.zeros(len(ready))
        return (fidelity >= topology.min_end_to_end_fidelity) & (pair_rate >= MIN_PAIR_RATE_HZ)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: compute a topology's contact plan, print it, write contacts.csv."""
    from relay.topology_file import load_topology

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topology", type=Path, help="topology file")
    parser.add_argument("--horizon-s", type=float, default=None,
                        help="end of the plan, s (default: 50 rounds)")
    parser.add_argument("--step-s", type=float, default=30.0, help="sampling step, s")
    parser.add_argument("--seed", type=int, default=0, help="mobility seed")
    parser.add_argument("--out", type=Path, default=Path("contacts.csv"), help="CSV to write")
    args = parser.parse_args(argv)
    try:
        topology = load_topology(args.topology)
        horizon_s = args.horizon_s or 50 * topology.round_duration_s
        started = time.perf_counter()
        plan = ContactPlan.compute(topology, horizon_s, seed=args.seed, step_s=args.step_s)
    except ValueError as error:
        parser.error(str(error))
    seconds = time.perf_counter() - started
    for node in plan.uav_ids + plan.satellites:
        windows = plan.windows(node)
        if windows and windows != [(0.0, plan.horizon_s)]:
            spans = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in windows)
            print(f"{node}: {spans}")
    always = [node for node in plan.uav_ids if plan.windows(node) == [(0.0, plan.horizon_s)]]
    print(f"always in contact: {', '.join(always) or 'none'}")
    plan.write_csv(args.out)
    print(f"wrote {args.out}; plan of {len(plan.uav_ids)} UAVs over {horizon_s:g} s "
          f"computed in {seconds:.2f} s")


if __name__ == "__main__":
    main()
