"""The run config schema: defaults agree with pyproject.toml, bad values are named."""

import tomllib
from pathlib import Path

import pytest

from task.config import DEFAULTS, SCHEMA, RunConfigError, parse_run_config

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_run_config_matches_schema_defaults():
    declared = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == DEFAULTS


def test_defaults_parse_and_round_trip():
    config = parse_run_config({})
    assert config.as_dict() == DEFAULTS
    assert config.model == "hybrid" and config.learning_rate == 0.001


def test_int_given_for_float_is_accepted():
    assert parse_run_config({"learning-rate": 1}).learning_rate == 1.0


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("num-server-rounds", -1, "an integer from 1 to"),
        ("num-server-rounds", 0, "an integer from 1 to"),
        ("model", "hybird", "'hybrid', 'classical', 'cnn'"),
        ("learning-rate", 0.0, "a number in (0.0, 10.0]"),
        ("learning-rate", float("nan"), "a number in (0.0, 10.0]"),
        ("fraction-train", 1.5, "a number in (0.0, 1.0]"),
        ("readout", "sample", "'expval', 'probs'"),
        ("quantum-backend", "qiskit.aer", "'torch', 'default.qubit'"),
        ("dataset", "cifar10", "'mnist', 'fashion-mnist'"),
        ("batch-size", "32", "an integer from 1 to"),
        ("local-epochs", True, "an integer from 1 to"),
        ("run-name", "../escape", "letters, digits"),
        ("relay", "carrier-pigeon", "a registered relay channel: 'ideal', 'qkd', 'teleport'"),
        ("shots", 2001, "an even integer from 2 to"),
        ("shots", 0, "an even integer from 2 to"),
        ("eavesdropper", 1.5, "a number in [0.0, 1.0]"),
        ("weighting", "fidelity", "'samples', 'samples-x-fidelity'"),
    ],
)
def test_bad_value_names_key_value_and_allowed(key, value, allowed):
    with pytest.raises(RunConfigError) as err:
        parse_run_config({key: value})
    message = str(err.value)
    assert f"'{key}'" in message and repr(value) in message and allowed in message


def test_unknown_key_is_refused_with_the_known_ones():
    with pytest.raises(RunConfigError, match="'modle' is not known; known keys: num-server-rounds"):
        parse_run_config({"modle": "cnn"})


def test_overrides_take_precedence_and_are_validated():
    assert parse_run_config({"model": "cnn"}, {"model": "classical"}).model == "classical"
    with pytest.raises(RunConfigError, match="'seed' = -3"):
        parse_run_config({}, {"seed": -3})


def test_every_schema_key_has_a_valid_default():
    for key, (spec, default) in SCHEMA.items():
        assert spec.check(default), key


def test_relay_keys_have_the_agreed_defaults():
    config = parse_run_config({})
    assert (config.relay, config.topology, config.shots) == ("ideal", "", 2000)
    assert (config.eavesdropper, config.weighting) == (0.0, "samples")
    assert parse_run_config({"eavesdropper": 1}).eavesdropper == 1.0
