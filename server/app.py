"""ServerApp: validates the run, runs QFL rounds over the relay, evaluates, writes outputs."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any, NoReturn

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from quantum.models import angle_periods, count_parameters
from relay.channels import Channel
from relay.contacts import ContactPlan
from relay.flower import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, WEIGHT_KEY
from relay.link import PathLink
from relay.shared_secret import SecretError
from relay.topology import Topology
from server.asynchronous import run_async
from server.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng_state,
    check_compatible,
    find_run,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from server.recorder import RunRecorder
from server.rounds import run_rounds
from server.watch import RunWatch, TrackingError, open_tracking
from strategies.asynchronous import PLAN_STEP_S, PLAN_TOLERANCE_S, AsyncRelayStrategy
from strategies.devices import UavDevices
from strategies.privacy import PrivacySettings
from strategies.relay import RelayStrategy
from strategies.relay_hierarchy import HierarchicalRelayStrategy
from strategies.server_optimizer import ServerOptimizerSettings
from task.config import RunConfig, RunConfigError, parse_run_config
from task.data import DatasetError, load_test_set
from task.devices import prepare_devices
from task.environment import run_environment
from task.outputs import (
    OutputError,
    check_output_location,
    new_run_dir,
    save_model,
    write_json,
)
from task.plots import plot_contacts, plot_topology
from task.train import model_from_config
from task.wiring import channel_from_config, load_run_topology


def _fail(message: str) -> NoReturn:
    """Stop the run before any training, with one clear line in the log."""
    log(ERROR, "Run stopped before training: %s", message)
    sys.exit(f"Run stopped before training: {message}")


@dataclass
class RunSetup:
    """Everything a run needs, checked before the first file is written."""

    config: RunConfig
    topology: Topology
    channel: Channel
    model: torch.nn.Module
    test_set: tuple[torch.Tensor, torch.Tensor]
    checkpoint: Checkpoint | None
    run_dir: Path | None
    tracking: Any = None
    """The MLflow client of run config ``tracking-uri`` (``None`` when it is empty)."""
    devices: UavDevices = field(default_factory=UavDevices)
    """Each UAV's device fidelity and circuit depth (run config ``device``, ``device-map``)."""


def _prepare(context: Context, overrides: Mapping[str, Any] | None) -> RunSetup:
    """Validate the run config and build topology, channel, model, test set and resume
    point; any problem stops the run here, before anything is written."""
    try:
        config = parse_run_config(context.run_config, overrides)
    except RunConfigError as err:
        _fail(str(err))
    if config.dp != "none" and importlib.util.find_spec("dp_accounting") is None:
        _fail(f"run config 'dp' = {config.dp!r} needs the privacy accountant: "
              "pip install dp-accounting==0.6.0 (part of the 'server' extra)")
    try:
        topology = load_run_topology(config)
        channel = channel_from_config(config)
    except (RunConfigError, SecretError) as err:
        _fail(str(err))
    devices = UavDevices()
    if config.device or config.device_map:
        try:
            devices.depth, devices.fidelity, lines = prepare_devices(config, topology.uav_ids)
        except RunConfigError as err:
            _fail(str(err))
        for line in lines:
            log(INFO, "%s", line)
    try:
        check_output_location(config.output_dir)
    except OutputError as err:
        _fail(str(err))
    tracking = None
    if config.tracking_uri:
        try:
            tracking = open_tracking(config.tracking_uri)
        except TrackingError as err:
            _fail(str(err))
    for warning in config.ignored_options():
        log(WARNING, "%s", warning)
    if config.mode == "async" and config.fraction_evaluate > 0:
        log(WARNING, "run config 'fraction-evaluate' = %s is ignored with mode 'async': "
            "federated evaluation runs in synchronous rounds only (central evaluation "
            "runs after every version)", config.fraction_evaluate)
    torch.set_num_threads(1)
    # Flower's own samplers draw from `random` (RelayStrategy draws by seeded hashes).
    random.seed(config.seed)
    model = model_from_config(config)
    checkpoint, run_dir = None, None
    if config.resume:
        try:
            run_dir = find_run(config.output_dir, config.resume)
            checkpoint = load_checkpoint(run_dir)
            check_compatible(checkpoint, config.as_dict(), ArrayRecord(model.state_dict()))
        except CheckpointError as err:
            _fail(str(err))
    try:
        test_set = load_test_set(config.dataset, config.data_dir, config.test_samples)
    except DatasetError as err:
        _fail(str(err))
    return RunSetup(config, topology, channel, model, test_set, checkpoint, run_dir, tracking,
                    devices)


def _build_strategy(setup: RunSetup, run_id: int) -> RelayStrategy:
    """The run's strategy, with the record keys both apps use (:mod:`relay.flower`):
    FedBuff's :class:`~strategies.asynchronous.AsyncRelayStrategy` for ``mode='async'``."""
    config = setup.config
    asynchronous: dict[str, Any] = {}
    if config.mode == "async":
        asynchronous = {
            "buffer_size": config.buffer_size,
            "max_staleness": config.max_staleness,
            "staleness_weighting": config.staleness_weighting,
            "staleness_exponent": config.staleness_exponent,
            "hierarchy": config.hierarchy,
        }
    # hierarchy 'relays': shared relays aggregate, emulated here (strategies.hierarchy).
    strategy_class: type[RelayStrategy] = (
        AsyncRelayStrategy if asynchronous
        else HierarchicalRelayStrategy if config.hierarchy == "relays" else RelayStrategy
    )
    strategy = strategy_class(
        channel=setup.channel,
        topology=setup.topology,
        run_id=run_id,
        seed=config.seed,
        weighting=config.weighting,
        angle_periods=angle_periods(setup.model),
        angle_aggregation=config.angle_aggregation,
        aggregation=config.aggregation,
        trim_fraction=config.trim_fraction,
        max_norm_ratio=config.max_norm_ratio,
        max_weight_ratio=config.max_weight_ratio,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_train_nodes,
        min_evaluate_nodes=1,
        min_available_nodes=config.min_train_nodes,
        arrayrecord_key=ARRAYS_KEY,
        configrecord_key=CONFIG_KEY,
        metricrecord_key=METRICS_KEY,
        weighted_by_key=WEIGHT_KEY,
        privacy=None if config.dp == "none" else PrivacySettings(
            config.dp, config.dp_noise_multiplier, config.dp_clip_norm, config.dp_delta
        ),
        server_optimizer=None if config.server_optimizer == "none" else ServerOptimizerSettings(
            config.server_optimizer, config.server_learning_rate, config.server_momentum,
            config.server_beta2, config.server_tau,
        ),
        **asynchronous,
    )
    strategy.devices = setup.devices
    if setup.checkpoint is not None:
        try:
            strategy.load_state(setup.checkpoint.strategy_state)
        except ValueError as err:
            _fail(f"cannot resume run {config.resume!r}: {err}")
    return strategy


def _join_nodes(strategy: RelayStrategy, grid: Grid, setup: RunSetup, first_round: int) -> None:
    """Draw the first round's nodes, asking them which UAV they are; a drawn node that
    cannot join stops the run."""
    topology, channel = setup.topology, setup.channel
    provenance = "".join(f"; {key}: {value}" for key, value in channel.provenance().items())
    log(INFO, "Relay: %s channel over topology %r (%s, %d UAVs)%s", channel.name,
        topology.name, topology.source, len(topology.uav_ids), provenance)
    # Before anything is written: a node of the first draw that cannot say which UAV it
    # is (say, more SuperNodes than UAVs, or a bad node config) stops the run here. A
    # small federation is asked whole; a larger one only as far as round one needs, and
    # a node first drawn later that cannot join is left out of the run with its reason.
    draw = strategy.first_draw(grid, first_round)
    if draw.refused:
        node_id, reason = next(iter(sorted(draw.refused.items())))
        _fail(f"node {node_id} cannot join the relay: {reason}")


def main(grid: Grid, context: Context, overrides: Mapping[str, Any] | None = None) -> None:
    """Run ``num-server-rounds`` rounds of QFL and write ``outputs/<run-name>/``.

    With run config ``resume``, continue that run from its last checkpoint instead.
    Everything the run config, the topology, the dataset or a checkpoint could get wrong
    is checked before the first file is written.
    """
    setup = _prepare(context, overrides)
    config, checkpoint = setup.config, setup.checkpoint
    strategy = _build_strategy(setup, context.run_id)
    first_round = checkpoint.server_round + 1 if checkpoint else 1
    _join_nodes(strategy, grid, setup, first_round)
    run_dir = setup.run_dir or _new_run_dir(config)
    _write_contact_plan(run_dir, strategy, config)
    _write_topology(run_dir, strategy, first_round)
    recorder = RunRecorder(
        config, run_dir, strategy, model_from_config(config), setup.test_set,
        rows=checkpoint.rows if checkpoint else None,
    )
    watch = RunWatch(run_dir, config.num_server_rounds, config.as_dict(), list(recorder.rows),
                     setup.tracking, config.tracking_uri)
    try:
        arrays = _train(grid, context, setup, strategy, recorder, watch, first_round)
        setup.model.load_state_dict(arrays.to_torch_state_dict())
        save_model(setup.model, run_dir / "final_model.pt")
    except BaseException as err:
        watch.close("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    watch.finish([run_dir / "final_model.pt", run_dir / "metrics.json",
                  run_dir / "config.json"])
    final = recorder.rows[-1]
    log(
        INFO,
        "Run %s finished: test accuracy %.4f, loss %.4f after %d rounds. Outputs in %s",
        run_dir.name, final["accuracy"], final["loss"], final["round"], run_dir,
    )


def _new_run_dir(config: RunConfig) -> Path:
    """A new run folder, or the run stopped before training with the reason."""
    try:
        return new_run_dir(config.output_dir, config.run_name, config.model, config.relay,
                           config.as_dict())
    except FileExistsError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"cannot create the run folder in {config.output_dir!r}: {err}")


def _train(
    grid: Grid, context: Context, setup: RunSetup, strategy: RelayStrategy,
    recorder: RunRecorder, watch: RunWatch, first_round: int,
) -> ArrayRecord:
    """Evaluate the initial model (or restore the checkpoint), run the rounds (or the
    asynchronous versions) and return the final arrays; every round is recorded, shown
    (:class:`server.watch.RunWatch`) and checkpointed."""
    config, checkpoint, run_dir = setup.config, setup.checkpoint, recorder.run_dir
    document = _config_document(run_dir, config, context, setup.model, strategy, checkpoint)
    _write_config(run_dir, document, strategy)

    def end_of_round(server_round: int, arrays: ArrayRecord) -> None:
        recorder.evaluate(server_round, arrays)
        # Before the checkpoint: a crash in between leaves a step the resumed run's event
        # file purges, never a round missing from TensorBoard.
        watch.round_done(recorder.rows)
        # The nodes known so far: each round may have drawn new ones.
        _write_config(run_dir, document, strategy)
        save_checkpoint(run_dir, Checkpoint(
            server_round, arrays, strategy.state(), capture_rng_state(), recorder.rows,
            config.as_dict(),
        ))

    strategy.summary()
    if checkpoint is None:
        log(INFO, "Run %s: outputs in %s", run_dir.name, run_dir)
        arrays = ArrayRecord(setup.model.state_dict())
        end_of_round(0, arrays)
    else:
        log(INFO, "Run %s: resumed after round %d of %d; outputs in %s", run_dir.name,
            checkpoint.server_round, config.num_server_rounds, run_dir)
        arrays = checkpoint.arrays
        restore_rng_state(checkpoint.rng_state)
    train_config = ConfigRecord({"learning-rate": config.learning_rate})
    if isinstance(strategy, AsyncRelayStrategy):
        return run_async(
            strategy, grid, arrays, config.num_server_rounds, train_config,
            _concurrency(config, grid), end_of_round, timeout=config.round_timeout,
        )
    return run_rounds(
        strategy, grid, arrays, range(first_round, config.num_server_rounds + 1),
        train_config, end_of_round, timeout=config.round_timeout,
    )


MAX_PLAN_UAVS = 1000
"""Largest federation whose contact plan a synchronous run writes (it costs about a
path tree per sample and window edge; the scale study's 10,000 UAVs would wait)."""


def _write_contact_plan(run_dir: Path, strategy: RelayStrategy, config: RunConfig) -> None:
    """``contacts.csv`` and ``contacts.png``: when each UAV has a path to the base station
    (and through what) and when each satellite is in view, over the run's mission."""
    topology = strategy.topology
    if isinstance(strategy, AsyncRelayStrategy):
        plan = strategy.contact_plan
    elif len(topology.uav_ids) > MAX_PLAN_UAVS:
        log(INFO, "Contact plan not written: %d UAVs (more than %d)", len(topology.uav_ids),
            MAX_PLAN_UAVS)
        return
    else:
        horizon_s = (config.num_server_rounds + 1) * topology.round_duration_s
        plan = ContactPlan.compute(topology, horizon_s, config.seed, PLAN_STEP_S,
                                   PLAN_TOLERANCE_S)
    plan.write_csv(run_dir / "contacts.csv")
    plot_contacts(plan, run_dir / "contacts.png", f"{run_dir.name}: contact plan "
                  f"({topology.name}, topology time)")


def _write_topology(run_dir: Path, strategy: RelayStrategy, first_round: int) -> None:
    """``topology.png``: the nodes where they are when the run's first round (or, with
    ``mode='async'``, its first jobs) starts, and each UAV's path coloured by fidelity."""
    topology = strategy.topology
    if len(topology.uav_ids) > MAX_PLAN_UAVS:
        log(INFO, "Topology figure not written: %d UAVs (more than %d)",
            len(topology.uav_ids), MAX_PLAN_UAVS)
        return
    links: Mapping[str, PathLink | None]
    if isinstance(strategy, AsyncRelayStrategy):
        time_s, links = strategy.topology_time_s(strategy.clock_s), strategy.links_now()
        when = f"topology time {time_s:.0f} s"
    else:
        time_s = first_round * topology.round_duration_s
        links, when = strategy.links_for_round(first_round), f"round {first_round}"
    positions = topology.positions_at(time_s, strategy.seed)
    plot_topology(topology, positions, links, run_dir / "topology.png",
                  f"{run_dir.name}: {topology.name}, {when}")


def _concurrency(config: RunConfig, grid: Grid) -> int:
    """UAVs training at once in ``mode='async'``: ``concurrency``, or (0) as many as a
    synchronous round trains."""
    if config.concurrency:
        return config.concurrency
    connected = len(list(grid.get_node_ids()))
    return max(int(connected * config.fraction_train), config.min_train_nodes, 1)


def _config_document(
    run_dir: Path,
    config: RunConfig,
    context: Context,
    model: torch.nn.Module,
    strategy: RelayStrategy,
    checkpoint: Checkpoint | None,
) -> dict[str, Any]:
    """What ``config.json`` holds but the node listing; a resumed run adds itself to the
    list of its starts."""
    starts = []
    previous = run_dir / "config.json"
    if checkpoint is not None and previous.is_file():
        starts = json.loads(previous.read_text()).get("starts", [])
    starts.append({
        "run_id": context.run_id,
        "after_round": checkpoint.server_round if checkpoint else 0,
        "num_server_rounds": config.num_server_rounds,
    })
    return {
        "run_config": config.as_dict(),
        "run_id": context.run_id,
        "starts": starts,
        "parameters": count_parameters(model),
        # The ServerApp's process, which evaluates centrally; of the latest start.
        "environment": run_environment(),
        "angle_arrays": sorted(strategy.angle_periods),
        "relay": {
            "channel": strategy.channel.name,
            "topology": strategy.topology.name,
            "topology_file": strategy.topology.source,
            **strategy.channel.provenance(),
        },
    }


def _write_config(run_dir: Path, document: dict[str, Any], strategy: RelayStrategy) -> None:
    """Write ``config.json`` with the nodes this start has learnt so far: which UAV each
    node drawn until now is, and the nodes refused with their reason."""
    relay = {
        **document["relay"],
        "uav_of_node": {str(n): u for n, u in sorted(strategy.uav_of_node.items())},
        "nodes_refused": {str(n): r for n, r in sorted(strategy.unmapped.items())},
    }
    write_json(run_dir / "config.json", {**document, "relay": relay})


def build_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """The ServerApp; ``overrides`` replace run config values (for runs from Python)."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid, context, overrides)

    return server_app


app = build_server_app()
