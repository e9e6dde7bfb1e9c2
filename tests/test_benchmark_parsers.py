"""The benchmarks' log readers, on a log as `flwr run . --stream` prints it."""

from benchmarks.startup import phases

LOG = [
    (2.6, "Starting local SuperLink on 127.0.0.1:39091..."),
    (8.8, "Using SuperLink: local-simulation (127.0.0.1:39091)"),
    (9.4, "Successfully started run 1790"),
    (17.7, "\x1b[92mINFO \x1b[0m:      Starting Flower Simulation"),
    (27.0, "\x1b[92mINFO \x1b[0m:      Relay: ideal channel over topology 'default-sagin' (...)"),
    (63.5, "\x1b[92mINFO \x1b[0m:      Run x: outputs in /tmp/out/x"),
    (64.5, "\x1b[92mINFO \x1b[0m:      Round 0/2: test accuracy 0.1151"),
    (64.5, "\x1b[92mINFO \x1b[0m:      [ROUND 1/2]"),
    (90.0, "<exit>"),
]


def test_startup_phases_split_the_log_at_their_lines():
    found = phases(LOG)
    assert found == {
        "cli_s": 2.6, "superlink_s": 6.2, "submit_s": 0.6, "simulation_process_s": 8.3,
        "serverapp_prepare_s": 9.3, "join_s": 36.5, "initial_evaluation_s": 1.0,
        "startup_s": 64.5,
    }


def test_a_phase_whose_line_never_came_is_none_and_the_rest_still_counts():
    found = phases([line for line in LOG if "Starting Flower Simulation" not in line[1]])
    assert found["simulation_process_s"] is None
    assert found["serverapp_prepare_s"] == round(27.0 - 9.4, 2)
    assert found["startup_s"] == 64.5
