"""How both apps build the run's relay from the run config, and which UAV a node is.

The ServerApp and every ClientApp build their end of the channel and read the topology
here, from the same run config, so the two ends agree; a ClientApp's end is its UAV's
(:func:`uav_id_of`), the ServerApp's the base station's.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from relay.channels import Channel, ChannelEnd, build_channel
from relay.channels.replay import state_folder
from relay.flower import UAV_ID_KEY
from relay.topology import Topology
from relay.topology_file import load_topology
from task.archives import cache_root
from task.config import RunConfig, RunConfigError
from task.data import node_partition


def load_run_topology(config: RunConfig) -> Topology:
    """The topology named by run config ``topology`` (empty: the shipped default).

    Raises
    ------
    RunConfigError
        The file cannot be read or breaks the topology schema.
    """
    try:
        return _load_topology(config.topology)
    except ValueError as error:
        raise RunConfigError(f"run config 'topology' = {config.topology!r}: {error}") from None


@lru_cache(maxsize=8)
def _load_topology(path: str) -> Topology:
    # Simulated clients share a process: read and validate the file once.
    return load_topology(path or None)


def channel_from_config(config: RunConfig, uav_id: str | None = None) -> Channel:
    """Build one end of the run's relay channel from its declared run-config options.

    Parameters
    ----------
    config : RunConfig
    uav_id : str, optional
        The UAV this end is (:func:`uav_id_of`); ``None`` for the base station's end,
        which encodes and decodes for every UAV.

    Raises
    ------
    relay.shared_secret.SecretError
        A channel that needs a pre-shared secret (``qkd``) found no usable one here.
    """
    cache = cache_root()
    end = ChannelEnd(uav_id=uav_id, secret_folder=cache, state_folder=state_folder(cache))
    return build_channel(config.relay, config.channel_values, end)


def uav_id_of(node_config: Mapping[str, Any], topology: Topology) -> str:
    """Which UAV this node is: node config ``uav-id``, else ``uav_ids[partition-id]``.

    Raises
    ------
    ValueError
        The UAV is not in the topology, or the partition id has no UAV.
    """
    uav_ids = topology.uav_ids
    if UAV_ID_KEY in node_config:
        uav_id = str(node_config[UAV_ID_KEY])
        if uav_id not in uav_ids:
            raise ValueError(
                f"node config uav-id {uav_id!r} is not a UAV of topology {topology.name!r} "
                f"({_listed(uav_ids)})"
            )
        return uav_id
    partition_id, _count = node_partition(node_config)
    if not 0 <= partition_id < len(uav_ids):
        raise ValueError(
            f"partition-id {partition_id} has no UAV: topology {topology.name!r} has "
            f"{len(uav_ids)} UAVs ({uav_ids[0]} .. {uav_ids[-1]}); use at most "
            f"{len(uav_ids)} SuperNodes, a topology with more UAVs, or node config 'uav-id'"
        )
    return uav_ids[partition_id]


def _listed(uav_ids: tuple[str, ...]) -> str:
    # A swarm's 10,000 names would make a message of 100 kB.
    if len(uav_ids) <= 12:
        return ", ".join(uav_ids)
    return f"{uav_ids[0]} .. {uav_ids[-1]}, {len(uav_ids)} UAVs"
