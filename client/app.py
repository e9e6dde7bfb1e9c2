"""ClientApp: one UAV's local training and evaluation on its partition, behind the relay mod."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.faults import build_attack_mod, build_failure_mod
from client.relay_mod import answer_uav_query, build_relay_mod
from task.config import RunConfig, parse_run_config
from task.data import load_partition, node_partition
from task.train import evaluate, model_from_config, train_local


def _local_data(config: RunConfig, context: Context):
    partition_id, num_partitions = node_partition(context.node_config)
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
    ), partition_id


def _local_model(config: RunConfig, msg: Message) -> torch.nn.Module:
    # Two simulated clients share a core: more threads only add contention.
    torch.set_num_threads(1)
    model = model_from_config(config)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def train(msg: Message, context: Context, config: RunConfig) -> Message:
    """Train the received global model on this UAV's partition and return it."""
    ((images, labels), _val), partition_id = _local_data(config, context)
    model = _local_model(config, msg)
    server_round = int(msg.content["config"]["server-round"])
    metrics = train_local(
        model,
        images,
        labels,
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=float(msg.content["config"].get("learning-rate", config.learning_rate)),
        seed=config.seed * 100_003 + server_round * 1_009 + partition_id,
    )
    metrics["num-examples"] = len(labels)
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


def evaluate_local(msg: Message, context: Context, config: RunConfig) -> Message:
    """Evaluate the received global model on this UAV's held-out validation slice."""
    (_train, (images, labels)), _partition_id = _local_data(config, context)
    model = _local_model(config, msg)
    loss, accuracy = evaluate(model, images, labels)
    metrics = {
        "eval-loss": loss,
        "eval-accuracy": accuracy,
        "num-examples": len(labels),
    }
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def build_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` replace run config values (for runs from Python).

    The relay mod wraps every handler: train and evaluate messages arrive through the
    run's relay channel and train replies leave through it; queries pass unchanged.
    The failure mod (outside the relay) and the attack mod (inside it, where updates
    are plain) only act when the run config asks for injected failures or attacks
    (see :mod:`client.faults`).
    """
    client_app = ClientApp(
        mods=[build_failure_mod(overrides), build_relay_mod(overrides), build_attack_mod(overrides)]
    )

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, parse_run_config(context.run_config, overrides))

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate_local(msg, context, parse_run_config(context.run_config, overrides))

    @client_app.query()
    def _query(msg: Message, context: Context) -> Message:
        return answer_uav_query(msg, context, parse_run_config(context.run_config, overrides))

    return client_app


app = build_client_app()
