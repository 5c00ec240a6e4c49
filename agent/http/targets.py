"""Traffic policy per target (``host:port``): how many calls in flight, how many per second, and a
circuit breaker that stops calling a target that keeps failing.

- ``agent.target.max_concurrency`` caps the calls in flight to one target;
  ``agent.target.rate`` (calls per second) with ``agent.target.burst`` is a token bucket. A
  profile's ``.max_concurrency``, ``.rate`` and ``.burst`` override them for its jobs. 0 means
  no limit.
- The breaker opens after ``agent.breaker.failures`` consecutive failures where the target gave
  no answer (connect, handshake, timeout). It stays open ``agent.breaker.open_seconds``, doubled
  at each opening in a row up to ``agent.breaker.max_open_seconds``; then one trial call goes
  through. An answer of any kind (an HTTP error is an answer) closes it; a failure opens it again.
- A job over a limit, or for an open target, waits here. Its caller learns when it starts
  waiting (``park``) so the worker can give its slot to another job, and waits for a slot again
  (``resume``) once admitted. The lease of a waiting job is renewed like any other claim's.

Only targets with something to remember are kept: a closed, idle target with a full bucket is
dropped, so jobs naming ever new hosts do not grow the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from yarl import URL

from agent.config.config import AgentConfig
from agent.errors import ErrorKind
from agent.jobs.results import Result

log = logging.getLogger("agent.targets")

NO_ANSWER = frozenset({ErrorKind.CONNECT, ErrorKind.TLS_HANDSHAKE, ErrorKind.TIMEOUT})
CLOSED, OPEN, TRIAL = "closed", "open", "half-open"


@dataclass(frozen=True, slots=True)
class Limits:
    max_concurrency: int = 0  # calls in flight (0: no limit)
    rate: float = 0.0  # calls per second (0: no limit)
    burst: int = 0  # the bucket's size (0: the rate rounded up, at least 1)

    @property
    def bucket(self) -> float:
        return float(self.burst or max(1, math.ceil(self.rate)))


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5  # consecutive failures that open it (0: no breaker)
    open_seconds: float = 30.0
    max_open_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class Hooks:
    """How a waiting job tells its worker: ``park`` when it starts waiting (its slot may go to
    another job), ``resume`` once admitted (returns when it has a slot again)."""

    park: Callable[[], None]
    resume: Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Traffic:
    """A configuration's traffic policy: the breaker, and the limits by profile (casefolded,
    as profile names match) with ``agent.target.*`` for the rest. Built once per runtime
    state (``engine/state.py``)."""

    breaker: BreakerPolicy
    default: Limits
    by_profile: Mapping[str, Limits]

    def limits(self, profile: str | None) -> Limits:
        """The limits for a job of ``profile``: its own where it sets them, else the default."""
        if profile is None:
            return self.default
        return self.by_profile.get(profile.casefold(), self.default)


def traffic_of(config: AgentConfig) -> Traffic:
    default = Limits(config.target_max_concurrency, config.target_rate, config.target_burst)
    by_profile = {
        name.casefold(): Limits(
            default.max_concurrency if p.max_concurrency is None else p.max_concurrency,
            default.rate if p.rate is None else p.rate,
            default.burst if p.burst is None else p.burst,
        )
        for name, p in config.profiles.items()
        if (p.max_concurrency, p.rate, p.burst) != (None, None, None)  # the rest: the default
    }
    breaker = BreakerPolicy(
        config.breaker_failures, config.breaker_open_seconds, config.breaker_max_open_seconds
    )
    return Traffic(breaker, default, MappingProxyType(by_profile))


def unanswered(result: Result | None) -> bool:
    """Whether ``result`` is a call the target gave no answer to (what the breaker counts)."""
    if result is None or result.error is None:
        return False
    return result.error.kind in NO_ANSWER and result.status is None


@functools.lru_cache(maxsize=4096)  # jobs repeat endpoints
def target_of(endpoint: str) -> str | None:
    """``host:port`` of an endpoint URL (the name as written, before any resolving)."""
    try:
        url = URL(endpoint)
        host, port = url.host, url.port
    except (ValueError, TypeError):
        return None
    return f"{host.lower()}:{port}" if host and port else None


class Gate:
    """One target's counters, bucket and breaker."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._wake: asyncio.Event | None = None  # made when a job first waits
        self.in_flight = 0
        self.waiting = 0
        self.users = 0  # jobs between asking for this gate and reporting their result
        self.tokens: float | None = None  # None: a full bucket
        self.refilled = time.monotonic()
        self.state = CLOSED
        self.failures = 0  # consecutive calls that got no answer
        self.openings = 0  # openings in a row (the open time doubles with each)
        self.openings_total = 0
        self.until = 0.0  # monotonic time an open breaker allows a trial
        self.trial_out = False
        self.last_failure = ""

    async def wait(self, delay: float | None) -> None:
        """Until something changes (a call ends) or ``delay`` seconds pass (None: no bound)."""
        if self._wake is None:
            self._wake = asyncio.Event()
        wake = self._wake
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
        finally:
            self.waiting -= 1

    def wake_all(self) -> None:
        if self._wake is not None and self.waiting:
            self._wake.set()
            self._wake = None  # later waiters wait for the next change

    def wait_needed(self, now: float, limits: Limits) -> float | None:
        """0: the job may go now; a number: seconds to wait at most; None: wait for a change."""
        if self.state == OPEN:
            if now < self.until:
                return self.until - now
            self.state, self.trial_out = TRIAL, False
            log.info("target %s: trying one call after the breaker's open time", self.key)
        if self.state == TRIAL and self.trial_out:
            return None
        if limits.max_concurrency and self.in_flight >= limits.max_concurrency:
            return None
        if limits.rate > 0:
            tokens = self._refill(now, limits)
            if tokens < 1:
                return (1 - tokens) / limits.rate
        return 0.0

    def _refill(self, now: float, limits: Limits) -> float:
        full = limits.bucket
        held = full if self.tokens is None else self.tokens
        self.tokens = min(full, held + (now - self.refilled) * limits.rate)
        self.refilled = now
        return self.tokens

    def take(self, limits: Limits) -> bool:
        """Admit one call; True when it is the breaker's trial."""
        self.in_flight += 1
        if limits.rate > 0 and self.tokens is not None:
            self.tokens -= 1
        trial = self.state == TRIAL
        if trial:
            self.trial_out = True
        return trial

    def outcome(self, result: Result | None, trial: bool, policy: BreakerPolicy) -> None:
        """What the call's result says of the target (None: the call was cut short)."""
        self.in_flight -= 1
        if unanswered(result):
            if policy.failures > 0:
                assert result is not None and result.error is not None
                self.failures += 1
                self.last_failure = result.error.kind
                if trial or self.failures >= policy.failures:
                    self._open(policy)
            elif trial:
                self.trial_out = False
        elif result is not None and (result.error is None or result.status is not None):
            self._answered()
        elif trial:
            self.trial_out = False  # told nothing about the target: the next job tries

    def _answered(self) -> None:
        if self.state != CLOSED:
            log.warning("target %s: answered again; the breaker is closed", self.key)
        self.state, self.failures, self.openings, self.trial_out = CLOSED, 0, 0, False

    def _open(self, policy: BreakerPolicy) -> None:
        self.openings += 1
        self.openings_total += 1
        seconds = min(policy.max_open_seconds, policy.open_seconds * 2 ** (self.openings - 1))
        self.state, self.until, self.trial_out = OPEN, time.monotonic() + seconds, False
        log.warning(
            "target %s: breaker open for %.0f s after %d call(s) without an answer (%s); its "
            "jobs wait",
            self.key,
            seconds,
            self.failures,
            self.last_failure,
        )

    def idle(self, limits: Limits) -> bool:
        """Nothing to remember: closed, nothing in flight or waiting, the bucket full."""
        if self.state != CLOSED or self.users or self.failures:
            return False
        if self.tokens is None or limits.rate <= 0:
            return True
        return self._refill(time.monotonic(), limits) >= limits.bucket

    def reason(self) -> str | None:
        """Why this target's jobs wait, for /readyz (None: they do not)."""
        if self.state == CLOSED:
            return None
        left = max(0.0, self.until - time.monotonic())
        what = f"trial in {left:.0f} s" if self.state == OPEN else "trial call in flight"
        return (
            f"breaker {self.state} after {self.failures} call(s) without an answer "
            f"({self.last_failure}); {what}; {self.waiting} job(s) waiting"
        )


@dataclass(slots=True)
class Ticket:
    """A call admitted to a target: report its result with ``Targets.leave``. ``gate`` is None
    for a target with nothing to remember and no limits: the common case costs no gate."""

    key: str
    gate: Gate | None
    trial: bool


class Targets:
    """The gates of all targets the agent is calling or remembers.

    ``enter`` then ``leave`` around each call. The common case (no limit reached, breaker
    closed) takes no lock and allocates one small ticket; waiting is on an event that ``leave``
    sets when someone waits."""

    def __init__(self) -> None:
        self.gates: dict[str, Gate] = {}
        self.on_open: list[Callable[[str], None]] = []  # called with the target's key

    async def enter(
        self, key: str, limits: Limits, policy: BreakerPolicy, hooks: Hooks | None
    ) -> Ticket:
        """Wait until ``key`` takes a call."""
        gate = self.gates.get(key)
        if gate is None:
            if not limits.max_concurrency and limits.rate <= 0:
                return Ticket(key, None, False)  # nothing to count until a call fails
            gate = self.gates[key] = Gate(key)
        gate.users += 1
        trial: bool | None = None
        try:
            delay = gate.wait_needed(time.monotonic(), limits)
            parked = delay != 0
            if parked and hooks is not None:
                hooks.park()
            while delay != 0:
                await gate.wait(delay)
                delay = gate.wait_needed(time.monotonic(), limits)
            trial = gate.take(limits)
            if parked and hooks is not None:
                await hooks.resume()
        except BaseException:
            if trial is not None:  # admitted, then cut short: as a call that told nothing
                self.leave(Ticket(key, gate, trial), None, policy, limits)
            else:
                self._done_with(gate, limits)
            raise
        return Ticket(key, gate, trial)

    def leave(
        self, ticket: Ticket, result: Result | None, policy: BreakerPolicy, limits: Limits
    ) -> None:
        """The admitted call ended with ``result`` (None: cut short)."""
        gate = ticket.gate
        if gate is None:
            if not unanswered(result):
                return  # answered (or told nothing): still nothing to remember
            gate = self.gates.get(ticket.key)
            if gate is None:
                gate = self.gates[ticket.key] = Gate(ticket.key)
            gate.users += 1
            gate.in_flight += 1  # as if admitted through it, so that outcome() can count
        openings = gate.openings_total
        gate.outcome(result, ticket.trial, policy)
        if gate.openings_total != openings:
            for callback in self.on_open:
                try:
                    callback(gate.key)
                except Exception:  # noqa: BLE001 - a listener must not cost the job its result
                    log.exception("target %s: breaker listener failed", gate.key)
        gate.wake_all()
        self._done_with(gate, limits)

    def _done_with(self, gate: Gate, limits: Limits) -> None:
        gate.users -= 1
        if gate.idle(limits) and self.gates.get(gate.key) is gate:
            del self.gates[gate.key]

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """(breaker state: 0 closed, 1 open, 2 half-open; jobs waiting) by target."""
        codes = {CLOSED: 0, OPEN: 1, TRIAL: 2}
        return {key: (codes[g.state], g.waiting) for key, g in self.gates.items()}

    def reasons(self) -> list[str]:
        return [f"{key}: {r}" for key, gate in self.gates.items() if (r := gate.reason())]
