"""Device-realistic circuits: calibrations, the noisy executor against qiskit-aer, run
config ``device`` / ``device-map``, calibration weighting and per-layer means."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from quantum.circuit import ansatz_gates, weight_shapes
from quantum.devices import DeviceProfile, circuit_fidelity, compile_ansatz, profile_from_json
from quantum.executor import TorchStatevectorExecutor
from quantum.mixed import TorchDensityMatrixExecutor
from quantum.names import DEVICE_NAMES
from strategies.devices import UavDevices
from strategies.means import weighted_aggregate
from task.config import RunConfigError, parse_run_config

SHAPES = weight_shapes(4, 2)


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    """One profile cache for the module, away from the user's."""
    monkeypatch.setenv("SAGIN_QFL_DEVICE_CACHE", str(tmp_path_factory.getbasetemp() / "dev"))


def _profile(name: str) -> DeviceProfile:
    from quantum.calibration import device_profile

    return device_profile(name, 4)


def _inputs(seed: int = 0, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(batch, 4, generator=generator, dtype=torch.float64) * 6 - 3
    weights = torch.rand(32, generator=generator, dtype=torch.float64) * 6 - 3
    return features, weights


def _run(executor, features, weights):
    return executor(features, weights[:24].reshape(2, 4, 3), weights[24:].reshape(2, 4))


def _noiseless(profile: DeviceProfile) -> DeviceProfile:
    return dataclasses.replace(
        profile, t1=(math.inf,) * 4, t2=(math.inf,) * 4, readout=((0.0, 0.0),) * 4,
        single={k: tuple((0.0, d) for _e, d in v) for k, v in profile.single.items()},
        couplers={k: (g, 0.0, d) for k, (g, _e, d) in profile.couplers.items()},
    )


# --- profiles --------------------------------------------------------------------------
def test_device_names_are_the_installed_fake_backends():
    import inspect

    from qiskit.providers import BackendV2
    from qiskit_ibm_runtime import fake_provider

    from quantum.calibration import class_name

    classes = {n for n, c in vars(fake_provider).items()
               if inspect.isclass(c) and issubclass(c, BackendV2) and n.startswith("Fake")}
    assert all(class_name(d) in classes or class_name(d) + "V2" in classes
               for d in DEVICE_NAMES)
    skipped = {"FakeFractionalBackend", "FakeArmonkV2", "FakeProviderForBackendV2"}
    assert len(DEVICE_NAMES) == len(classes - skipped)
    assert "fake_manila" in DEVICE_NAMES


@pytest.mark.parametrize("name", ["fake_manila", "fake_nairobi"])
def test_a_profile_holds_the_calibration_of_a_chain_and_round_trips(name):
    from quantum.calibration import load_backend

    profile = _profile(name)
    target = load_backend(name).target
    assert len(set(profile.qubits)) == 4 and not profile.ring
    for wire, qubit in enumerate(profile.qubits):
        assert profile.t1[wire] == target.qubit_properties[qubit].t1
        assert profile.single["sx"][wire][0] == target["sx"][(qubit,)].error
        assert 0 < profile.readout[wire][0] < 0.5
    for wire in range(3):  # consecutive wires are coupled (in some direction)
        assert f"{wire}-{wire + 1}" in profile.couplers or f"{wire + 1}-{wire}" in profile.couplers
    assert profile_from_json(profile.to_json()) == profile


def test_a_cached_profile_is_read_without_qiskit(monkeypatch):
    import quantum.calibration as calibration

    first = _profile("fake_manila")
    monkeypatch.setattr(calibration, "extract_profile", lambda *a: pytest.fail("extracted"))
    assert calibration.device_profile("fake_manila", 4) == first


# --- the executor against qiskit-aer ----------------------------------------------------
@pytest.mark.parametrize("name", ["fake_manila", "fake_nairobi"])
def test_the_executor_matches_aer_density_matrices_with_the_backends_noise_model(name):
    from quantum.aer_reference import aer_outputs

    profile = _profile(name)
    compiled = compile_ansatz(profile, 2)
    features, weights = _inputs(1)
    ours = _run(TorchDensityMatrixExecutor(compiled.gates, 4, SHAPES, "probs",
                                           device=compiled), features, weights)
    reference = aer_outputs(name, profile, compiled, features.numpy(), weights.numpy())
    assert np.abs(ours.numpy() - reference).max() < 1e-6
    noiseless = _run(TorchStatevectorExecutor(ansatz_gates(4, 2), 4, SHAPES, "probs"),
                     features, weights)
    assert np.abs(ours.numpy() - noiseless.numpy()).max() > 1e-2  # the noise is there


@pytest.mark.parametrize("name", ["fake_manila", "fake_sherbrooke", "fake_torino"])
def test_without_noise_the_native_circuit_is_the_ansatz(name):
    """cx, ecr and cz devices: the translation into native gates (and SWAPs) is exact."""
    profile = _noiseless(_profile(name))
    compiled = compile_ansatz(profile, 2)
    features, weights = _inputs(2)
    weights.requires_grad_(True)
    ours = _run(TorchDensityMatrixExecutor(compiled.gates, 4, SHAPES, "expval",
                                           device=compiled), features, weights)
    exact = _run(TorchStatevectorExecutor(ansatz_gates(4, 2), 4, SHAPES, "expval"),
                 features, weights)
    assert torch.allclose(ours, exact, atol=1e-10)
    (grad_ours,) = torch.autograd.grad(ours.sum(), weights)
    (grad_exact,) = torch.autograd.grad(exact.sum(), weights)
    assert torch.allclose(grad_ours, grad_exact, atol=1e-10)


def test_fused_and_gate_by_gate_agree_and_gradients_match_finite_differences():
    profile = _profile("fake_manila")
    compiled = compile_ansatz(profile, 2)
    fused = TorchDensityMatrixExecutor(compiled.gates, 4, SHAPES, "expval", device=compiled)
    plain = TorchDensityMatrixExecutor(compiled.gates, 4, SHAPES, "expval", device=compiled,
                                       fused=False)
    features, weights = _inputs(3, batch=2)
    assert torch.allclose(_run(fused, features, weights), _run(plain, features, weights),
                          atol=1e-12)
    weights.requires_grad_(True)
    (grad,) = torch.autograd.grad(_run(fused, features, weights).sum(), weights)
    step = 1e-6
    for index in (0, 13, 24, 31):
        shift = torch.zeros(32, dtype=torch.float64)
        shift[index] = step
        with torch.no_grad():
            difference = (_run(fused, features, weights + shift).sum()
                          - _run(fused, features, weights - shift).sum()) / (2 * step)
        assert abs(float(grad[index]) - float(difference)) < 1e-6


def test_a_shallower_circuit_leaves_the_layers_it_lacks_without_gradient():
    from quantum.layer import QuantumLayer

    layer = QuantumLayer(4, 2, device=_profile("fake_manila"), circuit_layers=1, init_seed=0)
    layer(torch.rand(3, 4)).sum().backward()
    assert layer.rotation_weights.grad[1].abs().max() == 0
    assert layer.crx_weights.grad[1].abs().max() == 0
    assert layer.rotation_weights.grad[0].abs().max() > 0
    profile = _profile("fake_manila")
    assert circuit_fidelity(profile, 2, 1) > circuit_fidelity(profile, 2) > 0.3


# --- run config -------------------------------------------------------------------------
@pytest.mark.parametrize(("values", "words"), [
    ({"device": "fake_nowhere"}, "'device' = 'fake_nowhere' is not allowed; use empty"),
    ({"device": "FakeManilaV2"}, "'fake_manila'"),
    ({"device": "fake_manila", "model": "classical"}, "use model 'hybrid'"),
    ({"device": "fake_manila", "quantum-backend": "default.mixed"}, "needs quantum-backend"),
    ({"device": "fake_manila", "gate-noise": 0.01}, "set 'gate-noise' to 0"),
    ({"weighting": "calibration"}, "set 'device' or 'device-map'"),
    ({"weighting": "calibration", "device": "fake_manila", "hierarchy": "relays"},
     "needs hierarchy 'none'"),
])
def test_bad_device_settings_are_refused_with_the_reason(values, words):
    with pytest.raises(RunConfigError, match=None) as caught:
        parse_run_config(values)
    assert words in str(caught.value)


def _write_map(tmp_path, data, suffix=".json"):
    path = tmp_path / f"devices{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else data)
    return str(path)


def test_a_device_map_in_toml_or_json_gives_each_uav_its_device_and_depth(tmp_path):
    from task.devices import device_plan, uav_device

    toml = '[uav-0]\ndevice = "fake_manila"\nn-layers = 1\n\n[uav-1]\ndevice = "fake_lima"\n'
    for path in (_write_map(tmp_path, toml, ".toml"),
                 _write_map(tmp_path, {"uav-0": {"device": "fake_manila", "n-layers": 1},
                                       "uav-1": "fake_lima"})):
        config = parse_run_config({"device-map": path, "n-layers": 2})
        plan = device_plan(config, ["uav-0", "uav-1", "uav-2"])
        assert [(p.device, p.n_layers) for p in plan.values()] == [
            ("fake_manila", 1), ("fake_lima", 2), ("", 2)]
        assert uav_device(config, "uav-0").n_layers == 1


@pytest.mark.parametrize(("data", "words"), [
    ({"uav-0": "fake_nowhere"}, "is not a known device"),
    ({"uav-0": {"device": "fake_manila", "n-layers": 3}}, "n-layers = 3 is not allowed"),
    ({"uav-9": "fake_manila"}, "not a UAV of the topology"),
    ({"uav-0": {"qubits": 5}}, "is not allowed"),
])
def test_a_bad_device_map_is_refused(tmp_path, data, words):
    from task.devices import device_plan

    config = parse_run_config({"device-map": _write_map(tmp_path, data)})
    with pytest.raises(RunConfigError, match=None) as caught:
        device_plan(config, ["uav-0", "uav-1"])
    assert words in str(caught.value)


def test_shallower_circuits_with_a_robust_rule_stop_the_run(tmp_path):
    from task.devices import prepare_devices

    path = _write_map(tmp_path, {"uav-0": {"device": "fake_manila", "n-layers": 1}})
    config = parse_run_config({"device-map": path, "aggregation": "median"})
    with pytest.raises(RunConfigError, match="'aggregation' is set otherwise"):
        prepare_devices(config, ["uav-0", "uav-1"])


@pytest.mark.usefixtures("flower_run")
def test_an_unknown_device_stops_the_run_before_training(tmp_path):
    from in_process import TINY, make_grid

    from server.app import main

    overrides = {**TINY, "output-dir": str(tmp_path), "device": "fake_atlantis"}
    context = _context()
    with pytest.raises(SystemExit, match="Run stopped before training: run config 'device'"):
        main(make_grid(overrides), context, overrides)
    assert list(tmp_path.iterdir()) == []


# --- weighting and aggregation ----------------------------------------------------------
def test_calibration_weighting_multiplies_samples_by_the_uavs_circuit_fidelity():
    from fake_replies import FakeReply
    from in_process import make_strategy

    from task.devices import UavDevice, device_fidelities

    overrides = {"device": "fake_manila", "weighting": "calibration"}
    strategy = make_strategy(overrides)
    strategy.uav_of_node = {11: "uav-0", 12: "uav-1"}
    config = parse_run_config(overrides)
    fidelities = device_fidelities(config, {"uav-0": UavDevice("fake_manila", 2),
                                            "uav-1": UavDevice("", 2)})
    assert fidelities["uav-0"] == circuit_fidelity(_profile("fake_manila"), 2)
    assert fidelities["uav-1"] == 1.0
    strategy.devices = UavDevices(fidelity=fidelities)
    assert strategy.weigh_update(FakeReply(11), 40.0, 1) == 40.0 * fidelities["uav-0"]
    assert strategy.weigh_update(FakeReply(12), 40.0, 1) == 40.0


def test_a_layer_only_deep_uavs_have_is_averaged_over_those_uavs_only():
    rotations = [np.full((2, 1, 3), v, dtype=np.float32) for v in (0.1, 0.3, 0.9)]
    rotations[0][1] = 2.5  # the shallow UAV's untouched deep layer (the old model's)
    updates = [{"quantum.rotation_weights": r, "head.bias": np.full(2, i, np.float32)}
               for i, r in enumerate(rotations)]
    weights = [1.0, 1.0, 2.0]
    periods = {"quantum.rotation_weights": 2 * math.pi}
    merged = weighted_aggregate(updates, weights, {}, [1, None, None], periods)
    mean = merged["quantum.rotation_weights"].numpy()
    assert mean[0] == pytest.approx(np.full((1, 3), (0.1 + 0.3 + 2 * 0.9) / 4))
    assert mean[1] == pytest.approx(np.full((1, 3), (0.3 + 2 * 0.9) / 3))  # not 2.5's
    assert merged["head.bias"].numpy() == pytest.approx(np.full(2, (0 + 1 + 4) / 4))
    circular = weighted_aggregate(updates, weights, periods, [1, None, None], periods)
    assert circular["quantum.rotation_weights"].numpy()[1, 0, 0] == pytest.approx(
        math.atan2(math.sin(0.3) + 2 * math.sin(0.9), math.cos(0.3) + 2 * math.cos(0.9)))
    shallow_only = weighted_aggregate(updates[:1], [1.0], {}, [1], periods)
    assert shallow_only["quantum.rotation_weights"].numpy()[1, 0, 0] == pytest.approx(2.5)


# --- runs ---------------------------------------------------------------------------------
def _context():
    from flower_messages import RUN_ID
    from flwr.app import Context, RecordDict

    return Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})


@pytest.mark.slow
@pytest.mark.usefixtures("flower_run")
def test_a_two_round_run_on_fake_manila_trains_and_writes_metrics(tmp_path):
    from in_process import TINY, make_grid

    from server.app import main

    overrides = {**TINY, "output-dir": str(tmp_path), "run-name": "dev",
                 "num-server-rounds": 2, "device": "fake_manila"}
    main(make_grid(overrides), _context(), overrides)
    rows = json.loads((tmp_path / "dev" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert all(math.isfinite(row["loss"]) for row in rows)
    assert json.loads((tmp_path / "dev" / "config.json").read_text())["run_config"][
        "device"] == "fake_manila"


@pytest.mark.slow
@pytest.mark.usefixtures("flower_run")
def test_a_mixed_federation_with_shallower_uavs_and_calibration_weights_runs(tmp_path):
    from in_process import TINY, make_grid

    from server.app import main

    path = _write_map(tmp_path, {"uav-0": {"device": "fake_manila", "n-layers": 1},
                                 "uav-1": "fake_nairobi"})
    overrides = {**TINY, "output-dir": str(tmp_path / "out"), "run-name": "mix",
                 "num-server-rounds": 1, "device-map": path, "weighting": "calibration"}
    main(make_grid(overrides), _context(), overrides)
    rows = json.loads((tmp_path / "out" / "mix" / "metrics.json").read_text())
    assert rows[-1]["round"] == 1 and math.isfinite(rows[-1]["loss"])


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_uav_builds_its_device_model_from_the_cache_without_qiskit_or_pennylane(tmp_path):
    import os
    import subprocess
    import sys

    from quantum.calibration import CACHE_ENV

    _profile("fake_manila")  # the ServerApp's extraction, into the cache
    code = (
        "import sys, time\n"
        "from task.config import parse_run_config\n"
        "from task.devices import uav_device\n"
        "from task.train import model_from_config\n"
        "config = parse_run_config({'device': 'fake_manila'})\n"
        "model_from_config(config, uav_device(config, 'uav-0'))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'qiskit', 'qiskit_ibm_runtime', 'pennylane', 'matplotlib'}))\n"
    )
    env = {**os.environ, CACHE_ENV: os.environ[CACHE_ENV]}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env=env).stdout.strip()
    assert loaded == "[]"


def test_a_damaged_or_foreign_cached_profile_is_extracted_again_never_used(tmp_path, monkeypatch):
    import json

    from quantum import calibration

    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path))
    good = calibration.device_profile("fake_manila", 4)
    path = tmp_path / "fake_manila-q4.json"
    original = path.read_bytes()
    # A flipped byte in a number, an impossible value with a matching digest, and another
    # device's profile under this name: each is re-extracted, the same as the original.
    text = original.decode()
    flipped = text.replace('"t1": [', '"t1": [9', 1)
    data = json.loads(text)
    data["profile"]["readout"][0] = [1.5, 0.0]
    impossible = json.dumps(data)
    other = calibration.device_profile("fake_lima", 4).to_json()
    for damaged in (flipped, impossible, other, "{", ""):
        path.write_text(damaged)
        assert calibration.device_profile("fake_manila", 4) == good
        assert path.read_bytes() == original
    with pytest.raises(ValueError, match="SHA-256"):
        profile_from_json(flipped)
    with pytest.raises(ValueError, match="not physical"):
        DeviceProfile(**{**good.__dict__, "t1": (-1.0, *good.t1[1:])})


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"\xff\xfe\x00", "bin.toml", "is not UTF-8 text"),
        (b"[uav-0]\ndevice = 3", "bad.toml", "uav-0"),
        (b"{", "broken.json", "is not valid json"),
        (b"x" * 1_000_001, "huge.toml", "is over 1,000,000 bytes"),
        (None, "folder", "is not a regular file"),
        (None, "/dev/zero", "is not a regular file"),
    ],
)
def test_a_hostile_device_map_is_refused_with_one_line(tmp_path, content, name, message):
    from task.config import parse_run_config
    from task.devices import device_plan

    path = tmp_path / name if not name.startswith("/") else None
    if path is not None and content is None:
        path.mkdir()
    elif path is not None:
        path.write_bytes(content)
    config = parse_run_config({}, {"device-map": str(path or name)})
    with pytest.raises(RunConfigError, match=message):
        device_plan(config, [f"uav-{i}" for i in range(10)])
