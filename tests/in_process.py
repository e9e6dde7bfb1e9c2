"""Flower without Ray or a SuperLink: real ClientApps in this process behind a Grid, and
the RelayStrategy that talks to them.

Messages travel between the strategy and the ClientApps through Flower's wire format
(protobuf), so what the other end sees is what a SuperLink would deliver; an optional
hook changes a message in transit.
"""

from __future__ import annotations

from flower_messages import RUN_ID, assign_message_id, over_the_wire
from flwr.app import ArrayRecord, Context, Message, RecordDict

from client.app import build_client_app
from relay.topology_file import load_topology
from strategies.relay import RelayStrategy
from task.config import parse_run_config
from task.train import model_from_config
from task.wiring import channel_from_config

TINY = {"max-samples-per-client": 40, "test-samples": 100, "seed": 7}
NODES = {101: 0, 202: 1, 303: 2}  # node id -> partition id


class InProcessGrid:
    """A Grid whose nodes are ClientApps in this process.

    ``tamper_down`` / ``tamper_up`` may change a message in transit; ``delivered`` keeps
    every reply as it arrived, for replay tests.
    """

    def __init__(self, overrides, node_configs: dict[int, dict]) -> None:
        self.client_app = build_client_app(overrides)
        self.contexts = {
            node_id: Context(
                run_id=RUN_ID, node_id=node_id, node_config=config, state=RecordDict(),
                run_config={},
            )
            for node_id, config in node_configs.items()
        }
        self.tamper_down = None
        self.tamper_up = None
        self.delivered: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for message in messages:
            received = over_the_wire(assign_message_id(message))
            if self.tamper_down:
                received = self.tamper_down(received)
            reply = self.client_app(received, self.contexts[message.metadata.dst_node_id])
            reply = over_the_wire(reply)
            if self.tamper_up:
                reply = self.tamper_up(reply)
            self.delivered.append(reply)
            replies.append(reply)
        return replies


def make_grid(overrides, nodes=NODES, num_partitions=3, **extra_config) -> InProcessGrid:
    return InProcessGrid(
        overrides,
        {
            node_id: {"partition-id": partition, "num-partitions": num_partitions, **extra_config}
            for node_id, partition in nodes.items()
        },
    )


def make_strategy(overrides, topology=None, cls=RelayStrategy, **kwargs) -> RelayStrategy:
    config = parse_run_config({}, overrides)
    channel = channel_from_config(config)
    kwargs = {
        "weighting": config.weighting,
        "min_train_nodes": 2,
        "min_available_nodes": 2,
        "fraction_evaluate": 0.0,
        **kwargs,
    }
    return cls(
        channel=channel,
        topology=topology or load_topology(),
        run_id=RUN_ID,
        seed=config.seed,
        **kwargs,
    )


def global_arrays(overrides) -> ArrayRecord:
    return ArrayRecord(model_from_config(parse_run_config({}, overrides)).state_dict())


class ServerKilled(Exception):  # noqa: N818 - reads as the event
    """Stands for the server process dying mid-run."""


class CrashingGrid(InProcessGrid):
    """Dies when it is asked to send the training messages of ``crash_round``."""

    def __init__(self, overrides, node_configs, crash_round: int) -> None:
        super().__init__(overrides, node_configs)
        self.crash_round = crash_round

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        config = messages[0].content.config_records.get("config") if messages else None
        if config is not None and config.get("server-round") == self.crash_round:
            raise ServerKilled(f"killed in round {self.crash_round}")
        return super().send_and_receive(messages, timeout=timeout)
