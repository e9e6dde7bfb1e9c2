"""A channel with its own run-config option is one file plus one registration line.

`toy_channel.py` is such a file; the import below is its registration line. Nothing else
in the project knows of it, yet the run config validates its option with the declared
range, both apps build it, and a Flower simulation runs over it.
"""

import json

import pytest
import toy_channel  # noqa: F401 - the registration line
from flwr.simulation import run_simulation

from client.app import build_client_app
from server.app import build_server_app
from task.config import RunConfigError, parse_run_config
from task.wiring import channel_from_config

TINY = {
    "num-server-rounds": 1,
    "model": "cnn",
    "max-samples-per-client": 100,
    "test-samples": 200,
    "min-train-nodes": 2,
    "relay": "toy",
}


def test_the_toy_option_joins_the_run_config_with_its_declared_range():
    config = parse_run_config({"relay": "toy", "toy-copies": 3})
    assert config.channel_values["toy-copies"] == 3
    assert config.as_dict()["toy-copies"] == 3
    channel = channel_from_config(config)
    assert (channel.name, channel.copies) == ("toy", 3)
    allowed = "'toy-copies' = 9 is not allowed; use an integer from 1 to 8"
    with pytest.raises(RunConfigError, match=allowed):
        parse_run_config({"relay": "toy", "toy-copies": 9})
    with pytest.raises(RunConfigError, match="'toy-copies' = '2' has type str"):
        parse_run_config({"toy-copies": "2"})


def _run(tmp_path, copies: int) -> tuple[list[dict], dict]:
    overrides = {
        **TINY, "toy-copies": copies, "output-dir": str(tmp_path), "run-name": f"toy{copies}",
    }
    run_simulation(
        server_app=build_server_app(overrides),
        client_app=build_client_app(overrides),
        num_supernodes=2,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    run_dir = tmp_path / f"toy{copies}"
    return (
        json.loads((run_dir / "metrics.json").read_text()),
        json.loads((run_dir / "config.json").read_text()),
    )


@pytest.mark.slow
def test_a_simulation_runs_over_the_toy_channel_and_bills_its_option(tmp_path):
    one, _config = _run(tmp_path, 1)
    three, config = _run(tmp_path, 3)
    assert config["relay"]["channel"] == "toy" and config["run_config"]["toy-copies"] == 3
    assert [row["clients_used"] for row in three] == [0, 2]
    # The same arrays crossed both runs; the option tripled what was billed for them.
    assert one[1]["bytes_up"] > 0 and one[1]["bytes_down"] > 0
    assert three[1]["bytes_up"] == 3 * one[1]["bytes_up"]
    assert three[1]["bytes_down"] == 3 * one[1]["bytes_down"]
    assert [row["accuracy"] for row in three] == [row["accuracy"] for row in one]
