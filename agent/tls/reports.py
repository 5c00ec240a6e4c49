"""What ``agent validate`` and the daemon's certificate check report for each profile."""

from __future__ import annotations

from dataclasses import replace

from agent.config.config import AgentConfig
from agent.credentials.inspect import ProfileReport, inspect_profile, report_error
from agent.errors import AgentError
from agent.tls.identities import Identities


async def collect_reports(
    config: AgentConfig, identities: Identities, names: list[str]
) -> list[ProfileReport]:
    reports = []
    for name in names:
        try:
            identity = await identities.for_profile(config.profiles[name])
        except AgentError as exc:
            reports.append(report_error(name, exc))
            continue
        report = inspect_profile(name, identity.material, warn_days=config.cert_warn_days)
        reports.append(replace(report, notes=report.notes + _config_notes(config, name)))
    return reports


def _config_notes(config: AgentConfig, name: str) -> tuple[str, ...]:
    """Where the material came from, and the server pins the profile's calls must match."""
    profile = config.profiles[name]
    notes = [f"material from {profile.store or 'files'}"]
    if profile.pins:
        notes.append(
            f"server key pinned (mid.httpclient.protocol.{name}.pin): {', '.join(profile.pins)}; "
            "agent sni-check URL --profile prints the pin a server presents"
        )
    return tuple(notes)
