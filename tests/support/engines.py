"""An Engine the way the daemon holds one, closed when the test is done with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent.config.config import AgentConfig
from agent.engine.engine import Engine


@asynccontextmanager
async def running_engine(config: AgentConfig) -> AsyncIterator[Engine]:
    engine = Engine(config)
    try:
        yield engine
    finally:
        await engine.close()
