"""systemd's notify protocol (``sd_notify``) without a dependency: datagrams to $NOTIFY_SOCKET.

``Type=notify`` units learn READY=1 once the agent polls, RELOADING=1/READY=1 around a SIGHUP,
STOPPING=1 on the first stop signal, and WATCHDOG=1 from the event loop every half
$WATCHDOG_USEC (a loop that hangs stops the pings and systemd restarts the service).

Only the process systemd started speaks: under ``agent.workers`` > 1 that is the supervisor, and
the worker processes (``AGENT_WORKER_INDEX`` set) stay silent even if they see the variable.
Without $NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("agent.notify")


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace socket
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other forms are not supported


class Notifier:
    """Speaks to the service manager; every method is a no-op when there is none."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        worker = env.get("AGENT_WORKER_INDEX")
        self.address = None if worker is not None else _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env) if self.address else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; failures are logged, never raised."""
        if self.address is None:
            return False
        data = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full socket queue must not stall the event loop
                sock.sendto(data, self.address)
        except OSError as exc:
            log.debug("cannot notify the service manager: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: draining jobs in flight")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    async def watchdog(self) -> None:
        """Ping every half watchdog interval while the event loop runs (until cancelled)."""
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval / 2)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """$WATCHDOG_USEC in seconds, when it is meant for this process ($WATCHDOG_PID)."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
