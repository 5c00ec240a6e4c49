"""The runtime state: everything a job runs on, assembled from one configuration, never changed.

``assemble`` is the one place where a configuration becomes working parts: the profiles become
credential identities (``Identities``), ``agent.outbound.allow`` an allow-list checked by name
and by address, ``agent.resolve`` and the SNI policy the call's settings, the limits the call's
bounds, the per-target limits and breaker the traffic policy. A reload assembles a new state
beside the one in force and the engine swaps a single reference; a job holds the state it began
with until it ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from agent.config.config import AgentConfig
from agent.http.policy import CallState, call_state
from agent.http.targets import Traffic, traffic_of
from agent.tls.identities import Identities, Identity, Staged, VaultLoader

_STATES = itertools.count(1)


@dataclass(frozen=True, slots=True)
class RuntimeState:
    config: AgentConfig  # the snapshot it was assembled from
    call: CallState  # what a call needs: identities, SNI policy, network, limits
    number: int  # 1 for the state the process started with, then one more per reload
    traffic: Traffic  # per-target limits by profile, and the breaker policy

    @property
    def identities(self) -> Identities:
        return self.call.identities


def assemble(
    config: AgentConfig,
    *,
    staged: Staged | None = None,
    vault_loader: VaultLoader | None = None,
    on_rotate: Callable[[Identity], None] | None = None,
) -> RuntimeState:
    """The runtime state for ``config``. ``staged``: its file-based profiles already loaded
    (``stage``), in force at once; other profiles load on first use. ``on_rotate`` is told of
    an identity no new job will use, so its connections can close."""
    if staged is not None and staged.config is not config:
        raise ValueError("the staged profiles were loaded for another configuration")
    identities = Identities(
        config.profiles,
        vault_loader=vault_loader,
        on_rotate=on_rotate,
        staged=staged,
        max_inline=config.max_inline_identities,
    )
    return RuntimeState(config, call_state(config, identities), next(_STATES), traffic_of(config))
