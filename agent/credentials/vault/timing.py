"""When the token and certificates are due: pure clock arithmetic, no I/O."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from agent.credentials.sources import ProfileMaterial

RENEW_FRACTION = 2 / 3  # renew tokens and certificates after this share of their lifetime
RETRY_MAX = 30.0  # seconds between attempts to renew after a failure, at most


def due(when: float | None) -> bool:
    return when is not None and when <= time.time()


def retry_delay(expires: float | None) -> float:
    """After a failed renewal: try again soon, sooner as expiry nears, never in a tight loop."""
    left = None if expires is None else expires - time.time()
    if left is None or left <= 0:
        return RETRY_MAX / 3  # nothing left to save: keep trying, quietly
    return min(RETRY_MAX, max(1.0, left / 4))


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
