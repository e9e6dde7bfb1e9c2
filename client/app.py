"""ClientApp: one UAV's local training and evaluation on its partition, behind the relay mod."""

from __future__ import annotations

import atexit
import gc
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.faults import attack_mod, failure_mod
from client.privacy_mod import privacy_mod
from client.relay_mod import answer_uav_query, build_relay_mod
from client.run_config import build_config_mod, current_config
from relay.flower import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, WEIGHT_KEY
from task.config import RunConfig
from task.data import Partition, data_partition, load_partition, node_partition
from task.devices import uav_device
from task.train import evaluate, model_from_config, train_local
from task.wiring import load_run_topology, uav_id_of


def _local_data(config: RunConfig, context: Context) -> tuple[Partition, int]:
    """This UAV's data, and its own partition id (which seeds its training: UAVs that
    share a data partition, run config ``data-partitions``, still train differently)."""
    uav_partition, _count = node_partition(context.node_config)
    partition_id, num_partitions = data_partition(context.node_config, config.data_partitions)
    data_dir = str(context.node_config.get("data-dir", config.data_dir))
    return load_partition(
        config.dataset,
        data_dir,
        partition_id,
        num_partitions,
        config.partitioning,
        config.dirichlet_alpha,
        config.seed,
        config.val_fraction,
        config.max_samples_per_client,
    ), uav_partition


def _local_model(config: RunConfig, msg: Message, context: Context) -> torch.nn.Module:
    # Two simulated clients share a core: more threads only add contention.
    torch.set_num_threads(1)
    uav = None
    if config.device or config.device_map:  # this UAV's device and circuit depth
        uav = uav_device(config, uav_id_of(context.node_config, load_run_topology(config)))
    model = model_from_config(config, uav)
    model.load_state_dict(msg.content.array_records[ARRAYS_KEY].to_torch_state_dict())
    return model


def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this UAV's partition and return it."""
    config = current_config()
    ((images, labels), _val), partition_id = _local_data(config, context)
    model = _local_model(config, msg, context)
    settings = msg.content.config_records[CONFIG_KEY]
    server_round = int(str(settings["server-round"]))
    learning_rate = settings.get("learning-rate", config.learning_rate)
    metrics: dict[str, int | float | list[int] | list[float]] = {
        **train_local(
            model,
            images,
            labels,
            epochs=config.local_epochs,
            batch_size=config.batch_size,
            learning_rate=float(learning_rate) if isinstance(learning_rate, int | float)
            else config.learning_rate,
            seed=config.seed * 100_003 + server_round * 1_009 + partition_id,
            proximal_mu=config.proximal_mu,
        ),
        WEIGHT_KEY: len(labels),
    }
    content = RecordDict(
        {ARRAYS_KEY: ArrayRecord(model.state_dict()), METRICS_KEY: MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this UAV's held-out validation slice."""
    config = current_config()
    (_train, (images, labels)), _partition_id = _local_data(config, context)
    model = _local_model(config, msg, context)
    loss, accuracy = evaluate(model, images, labels)
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "eval-loss": loss,
        "eval-accuracy": accuracy,
        WEIGHT_KEY: len(labels),
    }
    return Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)


def build_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` replace run config values (for runs from Python).

    Mods, outermost first: the config mod parses the run config once per message
    (:mod:`client.run_config`); the failure mod acts before anything crosses the link
    (a crashed UAV sends nothing); the relay mod decodes train and evaluate messages
    from the run's channel and encodes train replies for it (queries pass unchanged);
    the attack mod sits inside the relay, where updates are plain. The failure and
    attack mods only act when the run config asks for them (:mod:`client.faults`). The
    privacy mod, innermost, clips or noises training replies for ``dp='client'`` and
    ``dp='local'`` (:mod:`client.privacy_mod`): an attacker is a UAV that skips it.
    """
    client_app = ClientApp(
        mods=[build_config_mod(overrides), failure_mod, build_relay_mod(), attack_mod,
              privacy_mod]
    )
    client_app.train()(train)
    client_app.evaluate()(evaluate_local)
    client_app.query()(answer_uav_query)
    return client_app


# Flower starts a ClientApp process per message; once the reply is pushed the process
# only has to exit, and the garbage collector's passes over torch's objects during
# interpreter shutdown took most of its last second (`import client.app` then exit:
# 1.0-1.3 s of shutdown, 0.2-0.4 s with the objects frozen). The OS frees them anyway.
atexit.register(gc.freeze)

app = build_client_app()
