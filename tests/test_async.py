"""The asynchronous mode (FedBuff over the relay): staleness rules, and the event loop
driven against real ClientApps behind a push/pull grid that loses, delays, repeats and
reorders replies. Nothing is lost, nothing is aggregated twice, and the order replies
come back in over the network does not change the result."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flower_messages import RUN_ID, assign_message_id, over_the_wire
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from in_process import TINY, InProcessGrid, global_arrays, make_strategy

from relay.topology_file import DEFAULT_TOPOLOGY_PATH, load_topology
from server.app import main
from server.asynchronous import run_async
from strategies.asynchronous import AsyncRelayStrategy
from strategies.buffer import rebase, staleness_factor
from task.config import RunConfigError, parse_run_config

pytestmark = pytest.mark.usefixtures("flower_run")

TOPOLOGIES = DEFAULT_TOPOLOGY_PATH.parent
NODES = {101: 0, 202: 1, 303: 2, 404: 3, 505: 4}


def test_staleness_factor_rules():
    assert staleness_factor(0, "polynomial", 0.5) == 1.0
    assert staleness_factor(3, "polynomial", 0.5) == pytest.approx(0.5)
    assert staleness_factor(3, "polynomial", 0.0) == 1.0
    assert staleness_factor(7, "constant", 2.0) == 1.0
    for bad in ((-1, "constant", 0.5), (1, "linear", 0.5)):
        with pytest.raises(ValueError):
            staleness_factor(*bad)


def test_rebase_moves_the_current_version_by_the_wrapped_step():
    base = {"w": np.array([1.0, 2.0]), "theta": np.array([3.1, 0.0])}
    update = {"w": np.array([1.5, 1.0]), "theta": np.array([-3.1, 0.2])}
    current = {"w": np.array([10.0, 10.0]), "theta": np.array([math.pi - 0.01, 0.0])}
    moved = rebase(update, base, current, {"theta": 2 * math.pi})
    np.testing.assert_allclose(moved["w"], [10.5, 9.0])
    # 3.1 -> -3.1 is a step of +0.083 across pi, not -6.2; the result wraps into (-pi, pi].
    step = 2 * math.pi - 6.2
    np.testing.assert_allclose(moved["theta"], [math.pi - 0.01 + step - 2 * math.pi, 0.2])
    # From the current version itself, an update is itself.
    same = rebase(update, base, base, {"theta": 2 * math.pi})
    np.testing.assert_allclose(same["w"], update["w"])
    np.testing.assert_allclose(same["theta"], update["theta"], atol=1e-12)


@pytest.mark.parametrize(
    ("key", "value"),
    [("mode", "asynchronous"), ("buffer-size", 0), ("max-staleness", -1),
     ("staleness-weighting", "linear"), ("staleness-exponent", -0.5), ("concurrency", -2),
     ("hierarchy", "tree")],
)
def test_bad_values_of_the_new_keys_are_refused_with_their_range(key, value):
    with pytest.raises(RunConfigError, match=f"'{key}' = "):
        parse_run_config({key: value})


class PushPullGrid(InProcessGrid):
    """Real ClientApps behind Flower's non-blocking calls, with an unreliable network.

    ``dead`` nodes answer the UAV query but never a training message (a UAV that died
    after it joined); a reply is released only after ``delay_pulls`` pulls
    (per node); ``lifo`` releases the newest replies first; ``repeat`` hands every
    reply back on every pull.
    """

    def __init__(self, overrides, nodes, dead=(), delay_pulls=None, lifo=False, repeat=False):
        super().__init__(overrides, {
            node: {"partition-id": part, "num-partitions": 10} for node, part in nodes.items()
        })
        self.dead, self.delay_pulls = set(dead), dict(delay_pulls or {})
        self.lifo, self.repeat = lifo, repeat
        self.pending: list[tuple[str, object, int]] = []  # (message id, reply, pulls left)
        self.pushed = 0

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message = assign_message_id(message)
            ids.append(message.metadata.message_id)
            self.pushed += 1
            node = message.metadata.dst_node_id
            if node in self.dead and message.metadata.message_type == "train":
                continue
            reply = over_the_wire(self.client_app(over_the_wire(message), self.contexts[node]))
            self.pending.append((message.metadata.message_id, reply,
                                 self.delay_pulls.get(node, 0)))
        return ids

    def pull_messages(self, message_ids):
        wanted = set(message_ids)
        ready, waiting = [], []
        for message_id, reply, left in self.pending:
            if message_id in wanted and left <= 0:
                ready.append((message_id, reply, left))
            else:
                waiting.append((message_id, reply, left - 1 if message_id in wanted else left))
        self.pending = waiting + (ready if self.repeat else [])
        if self.lifo:
            ready.reverse()
        return [over_the_wire(reply) for _id, reply, _left in ready]


def _run(grid, overrides, versions=4, concurrency=3, timeout=30.0, **strategy_kwargs):
    config = parse_run_config({}, overrides)
    strategy = make_strategy(
        overrides, cls=AsyncRelayStrategy, buffer_size=config.buffer_size,
        max_staleness=config.max_staleness, staleness_weighting=config.staleness_weighting,
        staleness_exponent=config.staleness_exponent, angle_periods={}, **strategy_kwargs,
    )
    made: list[tuple[int, ArrayRecord]] = []
    arrays = run_async(
        strategy, grid, global_arrays(overrides), versions,
        ConfigRecord({"learning-rate": 0.01}), concurrency,
        lambda version, arrays: made.append((version, arrays)), timeout=timeout,
    )
    return strategy, made, arrays


def _check_every_job_accounted_once(strategy: AsyncRelayStrategy) -> dict[str, list[int]]:
    fates: dict[str, list[int]] = {"used": [], "rejected": [], "failed": []}
    sent: list[int] = []
    for report in strategy.reports:
        sent += report.jobs["sent"]
        for fate in fates:
            fates[fate] += report.jobs[fate]
    in_flight = strategy.reports[-1].jobs["in_flight"]
    ended = fates["used"] + fates["rejected"] + fates["failed"] + in_flight
    assert len(sent) == len(set(sent)), "a job number was sent twice"
    assert sorted(ended) == sorted(sent), "a job was lost or counted twice"
    return fates


OVERRIDES = {**TINY, "mode": "async", "buffer-size": 2, "concurrency": 3}


def test_versions_advance_every_buffer_and_every_job_is_accounted_once():
    grid = PushPullGrid(OVERRIDES, NODES)
    strategy, made, _arrays = _run(grid, OVERRIDES)
    assert [version for version, _ in made] == [1, 2, 3, 4]
    for report in strategy.reports:
        assert report.clients_used == 2
        assert report.staleness == [report.server_round - 1 - v for v in report.versions_used]
        assert all(0 <= s <= strategy.max_staleness for s in report.staleness)
    times = [report.emulated_time_s for report in strategy.reports]
    assert times == sorted(times) and times[0] > 0
    fates = _check_every_job_accounted_once(strategy)
    assert len(fates["used"]) == 8 and not fates["failed"] and not fates["rejected"]


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_the_order_replies_come_back_in_does_not_change_the_model():
    fifo = _run(PushPullGrid(OVERRIDES, NODES), OVERRIDES)[2]
    lifo = _run(PushPullGrid(OVERRIDES, NODES, lifo=True, delay_pulls={101: 3, 303: 1}),
                OVERRIDES)[2]
    for name in fifo:
        np.testing.assert_array_equal(fifo[name].numpy(), lifo[name].numpy())


def test_a_reply_handed_back_twice_is_aggregated_once():
    strategy, made, _ = _run(PushPullGrid(OVERRIDES, NODES, repeat=True), OVERRIDES)
    assert len(made) == 4
    fates = _check_every_job_accounted_once(strategy)
    assert len(fates["used"]) == len(set(fates["used"])) == 8


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_dead_uav_fails_at_its_deadline_and_the_run_goes_on_without_it():
    strategy, made, _ = _run(PushPullGrid(OVERRIDES, NODES, dead={202}), OVERRIDES, timeout=0.5)
    assert len(made) == 4
    fates = _check_every_job_accounted_once(strategy)
    assert fates["failed"], "the dead UAV's job must fail"
    reasons = {r for report in strategy.reports for r in report.failed.values()}
    assert reasons == {"no reply before the deadline (0.5 s)"}
    assert all(202 not in report.failed or report.failed[202] for report in strategy.reports)


def test_updates_staler_than_max_staleness_are_rejected_with_that_reason():
    overrides = {**OVERRIDES, "buffer-size": 1, "max-staleness": 0}
    strategy, made, _ = _run(PushPullGrid(overrides, NODES), overrides, versions=4)
    fates = _check_every_job_accounted_once(strategy)
    assert fates["rejected"]
    reasons = {r for report in strategy.reports for r in report.rejected.values()}
    assert all(reason.startswith("stale: trained from version") and "(max-staleness 0)" in reason
               for reason in reasons)
    assert all(s == 0 for report in strategy.reports for s in report.staleness)


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_uav_out_of_contact_delivers_when_its_next_window_opens():
    topology = load_topology(TOPOLOGIES / "sagin-leo-10.toml")
    strategy = make_strategy(OVERRIDES, topology=topology, cls=AsyncRelayStrategy,
                             angle_periods={})
    plan = strategy.contact_plan
    offset = topology.round_duration_s  # mission time 0 is topology time offset
    # uav-6..9 reach the base station only through satellite passes.
    uav_id = "uav-6"
    (first_open, first_close), (second_open, _close) = plan.windows(uav_id)[:2]
    strategy.clock_s = first_close - offset - 10.0  # 10 s before the window closes
    link = strategy.links_now()[uav_id]
    assert link is not None and link.path[1].startswith("WALKER")
    deliver = strategy._delivery_s(uav_id, link)
    # Training outlasts the window: the update waits for the next pass to open.
    assert topology.train_seconds(uav_id) > 10.0
    assert deliver == pytest.approx(second_open - offset)
    assert topology.links_at(second_open + 0.5, topology_seed := 7)[uav_id] is not None
    assert topology.links_at(second_open - 2.0, topology_seed)[uav_id] is None
    # A UAV always in contact delivers as soon as it has trained.
    strategy.clock_s = 100.0
    near = strategy.links_now()["uav-0"]
    assert strategy._delivery_s("uav-0", near) == pytest.approx(
        100.0 + topology.train_seconds("uav-0"))


HAP_NODES = {101: 4, 202: 5, 303: 6, 404: 7, 505: 0}
"""uav-4..uav-7 reach the base station through hap-0 on the default topology."""


@pytest.mark.parametrize("relay", ["ideal", "teleport"])
@pytest.mark.slow  # several seconds: left out of the quick tier
def test_relays_hold_updates_and_forward_one_aggregate_per_version(relay):
    overrides = {**OVERRIDES, "hierarchy": "relays", "buffer-size": 4, "concurrency": 5,
                 "relay": relay}
    strategy, made, arrays = _run(PushPullGrid(overrides, HAP_NODES), overrides, versions=3,
                                  concurrency=5, hierarchy="relays")
    assert [version for version, _ in made] == [1, 2, 3]
    fates = _check_every_job_accounted_once(strategy)
    assert len(fates["used"]) >= 3 * 3 and not fates["rejected"] and not fates["failed"]
    for report in strategy.reports:
        hops = report.hops()
        relayed = [n for n, r in report.relay_of_node.items() if r == "hap-0"]
        assert relayed, "the HAP's UAVs go through it"
        # Per version the HAP takes one copy of the model down and forwards one aggregate
        # up, however many of its UAVs' messages its lower hops carried.
        lower = sum(hop["messages"] for name, hop in hops.items() if name.endswith(">hap-0"))
        assert hops["hap-0>bs"]["messages"] <= 2 < lower
        assert all(s >= 0 for s in report.staleness)
    for value in arrays.values():
        assert np.isfinite(value.numpy()).all()


def _main(tmp_path, overrides, grid):
    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    main(grid, context, {**overrides, "output-dir": str(tmp_path)})
    return json.loads((tmp_path / overrides["run-name"] / "metrics.json").read_text())


@pytest.mark.slow
def test_the_serverapp_writes_one_row_per_version_and_resumes_from_the_last(tmp_path):
    overrides = {**OVERRIDES, "num-server-rounds": 2, "run-name": "async-run",
                 "test-samples": 50}
    rows = _main(tmp_path, overrides, PushPullGrid(overrides, NODES))
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert all(row["clients_used"] == 2 and row["staleness"] is not None for row in rows[1:])
    times = [row["emulated_time_s"] for row in rows]
    assert times == sorted(times) and times[-1] > 0
    run_dir = tmp_path / "async-run"
    assert (run_dir / "contacts.csv").read_text().startswith("node,kind,open_s,close_s")
    # Three more versions from the checkpoint of version 2: the clock and job numbers go on.
    resumed = {**overrides, "num-server-rounds": 4, "resume": "async-run", "run-name": ""}
    rows = _main(tmp_path, {**resumed, "run-name": "async-run"}, PushPullGrid(resumed, NODES))
    assert [row["round"] for row in rows] == [0, 1, 2, 3, 4]
    assert rows[3]["emulated_time_s"] >= rows[2]["emulated_time_s"]
    before = {job for row in rows[1:3] for job in row["jobs"]["sent"]}
    after = {job for row in rows[3:] for job in row["jobs"]["sent"]}
    assert before and after and min(after) > max(before)


@pytest.mark.slow
def test_relays_holding_every_free_uav_make_a_version_from_what_they_hold():
    """A buffer larger than the UAVs that can train: the relays' UAVs wait for a version,
    so the version is made from what is held instead of waiting for ever."""
    nodes = {101: 4, 202: 5, 303: 6}  # three UAVs, all behind hap-0
    overrides = {**OVERRIDES, "hierarchy": "relays", "buffer-size": 5, "concurrency": 3}
    strategy, made, _ = _run(PushPullGrid(overrides, nodes), overrides, versions=2,
                             concurrency=3, hierarchy="relays")
    assert [version for version, _ in made] == [1, 2]
    assert [report.clients_used for report in strategy.reports] == [3, 3]
    _check_every_job_accounted_once(strategy)
