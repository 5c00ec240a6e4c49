"""``agent run`` daemons that log to a file, and waiting on what they log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.cli import agent_cmd, arun_agent
from tests.support.configs import profile_config
from tests.support.pki import PKI


async def until(condition: Callable[[], Awaitable[bool]], what: str, deadline: float) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not await condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Daemon:
    name: str
    config: Path
    proc: asyncio.subprocess.Process
    log: Path

    def logged(self, text: str) -> bool:
        return text in self.log.read_text()

    async def wait_logged(self, text: str, deadline: float = 30) -> None:
        async def seen() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            return self.logged(text)

        await until(seen, f"{self.name} to log {text!r}", deadline)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


@asynccontextmanager
async def daemon(
    directory: Path, pki: PKI, port: int, name: str, url: str, **params: str
) -> AsyncIterator[Daemon]:
    """``agent run`` named ``name`` on queue ``url``, logging to a file; killed if still up."""
    directory.mkdir(parents=True, exist_ok=True)
    config = profile_config(directory, pki, port, name=name, url=url, **params)
    log = directory / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MID_CONFIG_")}
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *agent_cmd("-c", str(config), "run"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=sink,
            env=env,
        )
    running = Daemon(name, config, proc, log)
    try:
        await running.wait_logged("started")
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def enqueue(config: Path, jobs: list[dict[str, object]]) -> None:
    ran = await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(jobs))
    assert ran.returncode == 0, ran.stderr
    assert len(ran.stdout.split()) == len(jobs)
