"""Automatic run-folder names: two runs with different settings never look alike."""

import re

from task.config import parse_run_config
from task.outputs import new_run_dir, settings_digest


def test_automatic_names_carry_model_relay_and_a_digest_of_the_settings(tmp_path):
    ideal = parse_run_config({})
    teleport = parse_run_config({"relay": "teleport"})
    more_shots = parse_run_config({"relay": "teleport", "shots": 4000})
    names = [
        new_run_dir(str(tmp_path), "", c.model, c.relay, c.as_dict()).name
        for c in (ideal, teleport, more_shots)
    ]
    assert re.fullmatch(r"\d{8}-\d{6}-hybrid-ideal-[0-9a-f]{6}", names[0])
    assert "-hybrid-teleport-" in names[1] and "-hybrid-teleport-" in names[2]
    assert len({name.rsplit("-", 1)[-1] for name in names}) == 3


def test_the_digest_ignores_where_a_run_goes_and_what_it_is_called():
    base = parse_run_config({}).as_dict()
    placed = parse_run_config({"run-name": "x", "output-dir": "/elsewhere"}).as_dict()
    assert settings_digest(base) == settings_digest(placed)
    assert settings_digest(base) != settings_digest({**base, "seed": base["seed"] + 1})


def test_two_runs_in_the_same_second_get_two_folders(tmp_path):
    config = parse_run_config({}).as_dict()
    first = new_run_dir(str(tmp_path), "", "hybrid", "ideal", config)
    second = new_run_dir(str(tmp_path), "", "hybrid", "ideal", config)
    assert first != second and first.is_dir() and second.is_dir()
