"""Injected failures and attacks: client mods to test (and study) a federation's robustness.

Both are off by default and chosen by run config, so a researcher can run the same
federation with a fraction of clients that fail or lie:

- :func:`failure_mod` (``failure-rate``, ``failure-mode``): in each training round
  a client fails with probability ``failure-rate``. ``error``: its ClientApp raises, and
  Flower returns an error reply (the base station records the reason). ``timeout``: it
  replies only after the round's deadline (``round-timeout``), like a UAV that lost its
  link mid-round. Which client fails in which round is a pure function of the run seed,
  the round and the partition id, so a run is reproducible.
- :func:`attack_mod` (``attack``, ``attack-fraction``, ``attack-scale``): the
  hostile partitions, ``round(attack-fraction x num-partitions)`` of them chosen by the
  seed, replace their trained update ``u`` (global model ``g``, delta ``d = u - g``) by

  - ``scale``: ``g + s d`` (a boosted update),
  - ``sign-flip``: ``g - s d`` (pushes the model the other way),
  - ``random``: ``g + n`` with Gaussian noise ``n`` of norm ``s |d|`` per array,
  - ``inflate-examples``: the honest update, but ``num-examples`` claimed ``s`` times
    larger,

  with ``s`` = ``attack-scale``. Only float arrays are changed.

The attack mod sits inside the relay mod (it sees the decoded global model and the
plain update), the failure mod outside it (a crashed UAV sends nothing at all).
"""

from __future__ import annotations

import hashlib
import time
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from client.run_config import current_config
from relay.flower import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, WEIGHT_KEY, message_category
from task.data import node_partition

TIMEOUT_MARGIN_S = 1.0
"""How long after the round's deadline a ``timeout`` failure replies."""


class InjectedFailureError(RuntimeError):
    """The failure a ``failure-rate`` client raises (on purpose)."""


def _uniform(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts`` (same label, same number, in every process)."""
    label = "qfl-faults|" + "|".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "big") / 2.0**64


def fails_in_round(seed: int, server_round: int, partition_id: int, rate: float) -> bool:
    """Whether partition ``partition_id`` fails in ``server_round`` at ``failure-rate`` ``rate``."""
    return rate > 0 and _uniform("fail", seed, server_round, partition_id) < rate


def hostile_partitions(seed: int, num_partitions: int, fraction: float) -> frozenset[int]:
    """The partitions that attack: ``round(fraction x num_partitions)`` of them, by seed."""
    count = int(round(fraction * num_partitions))
    order = sorted(range(num_partitions), key=lambda p: _uniform("hostile", seed, p))
    return frozenset(order[:count])


def attacked_update(
    update: ArrayRecord,
    reference: ArrayRecord,
    attack: str,
    scale: float,
    rng: np.random.Generator,
) -> ArrayRecord:
    """The update a hostile client sends instead of ``update`` (see the module doc)."""
    if attack == "inflate-examples":
        return update
    attacked = ArrayRecord()
    for name, array in update.items():
        value = array.numpy()
        if value.dtype.kind != "f" or name not in reference:
            attacked[name] = array
            continue
        base = reference[name].numpy().astype(np.float64)
        delta = value.astype(np.float64) - base
        if attack == "scale":
            new = base + scale * delta
        elif attack == "sign-flip":
            new = base - scale * delta
        elif attack == "random":
            noise = rng.standard_normal(delta.shape)
            norm = float(np.linalg.norm(noise))
            new = base + noise * (scale * float(np.linalg.norm(delta)) / norm if norm else 0.0)
        else:
            raise ValueError(f"attack {attack!r} is not known")
        attacked[name] = Array(new.astype(value.dtype))
    return attacked


def _round_and_partition(msg: Message, context: Context) -> tuple[int, int, int]:
    settings = msg.content.config_records.get(CONFIG_KEY)
    server_round = settings.get("server-round") if settings is not None else None
    if isinstance(server_round, bool) or not isinstance(server_round, int):
        raise ValueError(f"training message has no integer 'server-round': {server_round!r}")
    partition_id, num_partitions = node_partition(context.node_config)
    return server_round, partition_id, num_partitions


def failure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Make training fail at run config ``failure-rate`` (see the module doc)."""
    if message_category(msg.metadata.message_type) != MessageType.TRAIN:
        return call_next(msg, context)
    config = current_config()
    if config.failure_rate == 0.0:
        return call_next(msg, context)
    server_round, partition_id, _count = _round_and_partition(msg, context)
    if not fails_in_round(config.seed, server_round, partition_id, config.failure_rate):
        return call_next(msg, context)
    if config.failure_mode == "error":
        raise InjectedFailureError(
            f"injected failure: partition {partition_id} fails in round {server_round} "
            f"(failure-rate {config.failure_rate:g})"
        )
    delay = config.round_timeout + TIMEOUT_MARGIN_S
    log(WARNING, "Injected straggler: partition %s replies in round %s after %.1f s",
        partition_id, server_round, delay)
    time.sleep(delay)
    return call_next(msg, context)


def attack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Turn the hostile partitions' training replies into attacks (see the module doc)."""
    if message_category(msg.metadata.message_type) != MessageType.TRAIN:
        return call_next(msg, context)
    config = current_config()
    if config.attack == "none" or config.attack_fraction == 0.0:
        return call_next(msg, context)
    server_round, partition_id, num_partitions = _round_and_partition(msg, context)
    hostile = hostile_partitions(config.seed, num_partitions, config.attack_fraction)
    if partition_id not in hostile:
        return call_next(msg, context)
    reference = msg.content.array_records.get(ARRAYS_KEY)
    reply = call_next(msg, context)
    if reply.has_error() or reference is None:
        return reply
    update = reply.content.array_records.get(ARRAYS_KEY)
    metrics = reply.content.metric_records.get(METRICS_KEY)
    if update is None or metrics is None:
        return reply
    rng = np.random.default_rng([config.seed, server_round, partition_id])
    reply.content[ARRAYS_KEY] = attacked_update(
        update, reference, config.attack, config.attack_scale, rng
    )
    if config.attack == "inflate-examples":
        claimed = metrics.get(WEIGHT_KEY)
        if isinstance(claimed, int | float):
            reply.content[METRICS_KEY] = MetricRecord(
                {**metrics, WEIGHT_KEY: int(round(claimed * config.attack_scale))}
            )
    log(INFO, "Injected attack: partition %s sends a '%s' update (x%g) in round %s",
        partition_id, config.attack, config.attack_scale, server_round)
    return reply
