"""An embedded queue for a test: ``from tests.support.queues import queue_fixture`` makes
fixture ``queue``, an opened ``SqliteQueue`` in the test's directory, closed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.queues.sqlite import SqliteQueue


@pytest.fixture(name="queue")
async def queue_fixture(tmp_path: Path) -> AsyncIterator[SqliteQueue]:
    q = SqliteQueue(tmp_path / "queue.db")
    await q.open()
    yield q
    await q.close()
