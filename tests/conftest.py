"""Fixtures shared by several test modules (plain helpers: ``flower_messages.py``,
``in_process.py``, ``fake_replies.py``).

None is autouse: a module that wants one for every test says so with
``pytestmark = pytest.mark.usefixtures(...)``.
"""

from __future__ import annotations

import pytest
from flower_messages import RUN_ID, SECRET, task_identity

from relay.shared_secret import ENV_VAR


@pytest.fixture
def flower_run(monkeypatch):
    """Messages need a run and task identity; the QKD secret comes from the environment."""
    monkeypatch.setenv(ENV_VAR, SECRET.hex())
    with task_identity(RUN_ID):
        yield
