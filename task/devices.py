"""Which device each UAV's circuit runs on: run config ``device`` and ``device-map``.

``device`` names one backend for every UAV (and for the ServerApp's central evaluation).
``device-map`` is a TOML or JSON file that maps UAV ids to a backend and, optionally, a
shallower circuit::

    [uav-0]
    device = "fake_manila"
    n-layers = 1

    [uav-1]
    device = "fake_nairobi"

(in JSON ``{"uav-0": {"device": "fake_manila", "n-layers": 1}, "uav-1": "fake_nairobi"}``).
A UAV the map does not list runs on ``device`` (noiseless if that is empty) with all the
run config's ``n-layers``; a UAV's ``n-layers`` may only be smaller (the global model has
the run's depth; see :mod:`strategies.means` for how layers are then averaged).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantum.names import device_problem
from task.config import RunConfig, RunConfigError


@dataclass(frozen=True)
class UavDevice:
    """One UAV's circuit: its device (``""``: noiseless) and how many layers it runs."""

    device: str
    n_layers: int


def _entry(uav_id: str, value: Any, config: RunConfig, where: str) -> UavDevice:
    if isinstance(value, str):
        value = {"device": value}
    if not isinstance(value, Mapping) or set(value) - {"device", "n-layers"}:
        raise RunConfigError(
            f"{where}: entry {uav_id!r} = {value!r} is not allowed; use a device name or a "
            "table with 'device' and optionally 'n-layers'"
        )
    device = value.get("device", config.device)
    problem = device_problem(device) if isinstance(device, str) and device else (
        None if device == "" else "is not a device name")
    if problem:
        raise RunConfigError(f"{where}: {uav_id!r} device {device!r} {problem}")
    layers = value.get("n-layers", config.n_layers)
    if isinstance(layers, bool) or not isinstance(layers, int) or not (
            1 <= layers <= config.n_layers):
        raise RunConfigError(
            f"{where}: {uav_id!r} n-layers = {layers!r} is not allowed; use an integer from "
            f"1 to the run's n-layers ({config.n_layers})"
        )
    return UavDevice(device, layers)


MAX_MAP_BYTES = 1_000_000
"""Largest device map read (a map of 10,000 UAVs is a few hundred kB)."""


def read_device_map(config: RunConfig) -> dict[str, UavDevice]:
    """The entries of run config ``device-map`` (empty without one).

    Raises
    ------
    RunConfigError
        The file cannot be read, is neither TOML nor JSON, or has a bad entry.
    """
    if not config.device_map:
        return {}
    where = f"run config 'device-map' = {config.device_map!r}"
    path = Path(config.device_map)
    try:
        if path.exists() and not path.is_file():
            raise RunConfigError(f"{where} is not a regular file")
        if path.exists() and path.stat().st_size > MAX_MAP_BYTES:
            raise RunConfigError(f"{where} is over {MAX_MAP_BYTES:,} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RunConfigError(f"{where} cannot be read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise RunConfigError(f"{where} is not UTF-8 text") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except ValueError as error:
        raise RunConfigError(f"{where} is not valid {path.suffix[1:] or 'TOML'}: "
                             f"{error}") from None
    if not isinstance(data, dict):
        raise RunConfigError(f"{where} must map UAV ids to devices")
    return {str(uav): _entry(str(uav), value, config, where) for uav, value in data.items()}


def device_plan(config: RunConfig, uav_ids: Iterable[str]) -> dict[str, UavDevice]:
    """Every UAV's device and depth; checks the map names only UAVs of the topology."""
    entries = read_device_map(config)
    uav_ids = list(uav_ids)
    unknown = sorted(set(entries) - set(uav_ids))
    if unknown:
        raise RunConfigError(
            f"run config 'device-map' = {config.device_map!r} names {unknown[0]!r}, which is "
            f"not a UAV of the topology ({', '.join(uav_ids[:3])}, ...)"
        )
    default = UavDevice(config.device, config.n_layers)
    return {uav_id: entries.get(uav_id, default) for uav_id in uav_ids}


def uav_device(config: RunConfig, uav_id: str) -> UavDevice:
    """One UAV's device and depth (what its ClientApp builds its model with)."""
    if not config.device_map:
        return UavDevice(config.device, config.n_layers)
    return read_device_map(config).get(uav_id, UavDevice(config.device, config.n_layers))


def device_fidelities(config: RunConfig, plan: Mapping[str, UavDevice]) -> dict[str, float]:
    """Each UAV's expected circuit fidelity (:func:`quantum.devices.circuit_fidelity`;
    1.0 for a noiseless UAV): what ``weighting='calibration'`` multiplies samples by."""
    from quantum.calibration import device_profile
    from quantum.devices import circuit_fidelity

    fidelities = {}
    for uav_id, entry in plan.items():
        fidelities[uav_id] = 1.0 if not entry.device else circuit_fidelity(
            device_profile(entry.device, config.n_qubits), config.n_layers, entry.n_layers)
    return fidelities


def prepare_devices(config: RunConfig, uav_ids: Iterable[str]
                    ) -> tuple[dict[str, int], dict[str, float], list[str]]:
    """The ServerApp's check of the run's devices, before training.

    Reads the map, extracts (and caches) every profile the run needs, so that no UAV has
    to, and refuses per-UAV depths with what cannot average layers apart.

    Returns
    -------
    depths, fidelities, lines
        The depth of every UAV whose circuit is shallower than the run's, every UAV's
        expected circuit fidelity, and one log line per device.

    Raises
    ------
    RunConfigError
        A bad map, a device qiskit cannot load here, or depths with a robust rule, dp,
        relay hierarchy or async mode.
    """
    plan = device_plan(config, uav_ids)
    depths = {uav: entry.n_layers for uav, entry in plan.items()
              if entry.n_layers < config.n_layers}
    mixed = [key for key, on in (
        ("aggregation", config.aggregation != "fedavg"), ("dp", config.dp != "none"),
        ("hierarchy", config.hierarchy != "none"), ("mode", config.mode != "sync")) if on]
    if depths and mixed:
        raise RunConfigError(
            f"run config 'device-map' = {config.device_map!r} gives UAVs shallower circuits, "
            "whose layers are averaged over the UAVs that have them (fedavg, sync rounds, "
            f"no dp, hierarchy 'none'); run config '{mixed[0]}' is set otherwise"
        )
    try:
        fidelities = device_fidelities(config, plan)
    except ImportError as error:
        raise RunConfigError(
            f"run config 'device' / 'device-map' needs qiskit-ibm-runtime to read device "
            f"calibrations ({error}); pip install -e '.[devices]'"
        ) from None
    except ValueError as error:
        raise RunConfigError(f"run config 'device' / 'device-map': {error}") from None
    from quantum.calibration import device_profile

    lines = []
    for device in sorted({entry.device for entry in plan.values() if entry.device}):
        profile = device_profile(device, config.n_qubits)
        users = [uav for uav, entry in plan.items() if entry.device == device]
        lines.append(f"Device {device}: qubits {list(profile.qubits)} "
                     f"({'ring' if profile.ring else 'chain'}), {len(users)} UAV(s), "
                     f"expected circuit fidelity {fidelities[users[0]]:.4f}")
    return depths, fidelities, lines
