"""What ``agent validate`` and the daemon's certificate check report for each profile."""

from __future__ import annotations

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
        reports.append(inspect_profile(name, identity.material, warn_days=config.cert_warn_days))
    return reports
