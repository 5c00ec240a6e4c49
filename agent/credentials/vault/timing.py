"""When the token and certificates are due: pure clock arithmetic, no I/O."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

from agent.credentials.sources import ProfileMaterial

RENEW_FRACTION = 2 / 3  # renew tokens and certificates after this share of their lifetime
RETRY_FIRST = 1.0  # seconds before the first retry after a failure (before jitter)
RETRY_MAX = 30.0  # seconds between attempts to renew after a failure, at most


def due(when: float | None) -> bool:
    return when is not None and when <= time.time()


def retry_delay(
    expires: float | None, failures: int = 1, rand: Callable[[], float] = random.random
) -> float:
    """After the ``failures``-th failure in a row: back off (1, 2, 4 ... RETRY_MAX s), never
    beyond a quarter of the time left before ``expires``, and jittered to between half and all
    of that, so that agents which lost the vault together do not come back together."""
    delay = min(RETRY_MAX, RETRY_FIRST * (1 << min(max(failures, 1) - 1, 16)))
    left = None if expires is None else expires - time.time()
    if left is not None and left > 0:
        delay = min(delay, max(RETRY_FIRST, left / 4))
    return delay * (0.5 + rand() / 2)


def expiry(material: ProfileMaterial) -> float | None:
    """When the material's client certificate expires (a timestamp), if it has one."""
    client = material.client
    return client.leaf.not_valid_after_utc.timestamp() if client is not None else None


def not_after(material: ProfileMaterial) -> str:
    when = expiry(material)
    if when is None:
        return "no expiry"
    return f"{datetime.fromtimestamp(when, UTC):%Y-%m-%d %H:%M:%S} UTC"


def still_valid(material: ProfileMaterial) -> bool:
    when = expiry(material)
    return when is None or when > time.time()
