"""Fixtures shared by several test modules (plain helpers: ``flower_messages.py``,
``in_process.py``, ``fake_replies.py``).

None is autouse: a module that wants one for every test says so with
``pytestmark = pytest.mark.usefixtures(...)``.
"""

from __future__ import annotations

import io
import logging

import pytest
from flower_messages import RUN_ID, SECRET, task_identity

from relay.channels.replay import STATE_DIR_ENV_VAR
from relay.shared_secret import LEGACY_ENV_VAR, MASTER_ENV_VAR, SECRET_DIR_ENV_VAR


@pytest.fixture
def flower_run(monkeypatch, tmp_path_factory):
    """Messages need a run and task identity; the QKD secrets are derived from a master in
    the environment (simulation mode), and the UAVs' replay memories start empty (every
    test reuses the run id)."""
    monkeypatch.setenv(MASTER_ENV_VAR, SECRET.hex())
    monkeypatch.delenv(SECRET_DIR_ENV_VAR, raising=False)
    monkeypatch.delenv(LEGACY_ENV_VAR, raising=False)
    monkeypatch.setenv(STATE_DIR_ENV_VAR, str(tmp_path_factory.mktemp("relay-state")))
    with task_identity(RUN_ID):
        yield


@pytest.fixture
def flwr_log():
    """Everything Flower's logger writes during the test."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)
