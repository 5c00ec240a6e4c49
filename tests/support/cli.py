"""The agent's command line as a subprocess, blocking or on the test's event loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MID_CONFIG_")}


def run_agent(
    *args: str, input: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_cmd(*args),
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=_clean_env(),
    )


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def arun_agent(*args: str, input: str | None = None) -> Ran:
    """Run the agent CLI without blocking the test's event loop (servers live on it)."""
    proc = await asyncio.create_subprocess_exec(
        *agent_cmd(*args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_clean_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(input.encode() if input else None), 120)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def start_daemon(config: Path) -> asyncio.subprocess.Process:
    """``agent run`` on ``config``, its log on the process's stderr."""
    return await asyncio.create_subprocess_exec(
        *agent_cmd("-c", str(config), "run"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def log_line(daemon: asyncio.subprocess.Process, text: str) -> str:
    """Read the daemon's log until a line containing ``text``."""
    assert daemon.stderr is not None
    while line := (await daemon.stderr.readline()).decode():
        if text in line:
            return line
    raise AssertionError(f"the daemon exited without logging {text!r}")
