"""``agent validate``: load every profile's material and report what a partner would object to."""

from __future__ import annotations

import json
import sys
from typing import Any

from agent.config.config import AgentConfig
from agent.errors import ConfigError
from agent.tls.reports import collect_reports


async def run_validate(config: AgentConfig, *, profile: str | None, as_json: bool) -> int:
    from agent.engine.engine import Engine

    names = sorted(config.profiles)
    if profile is not None:
        found = config.profile(profile)  # matched without regard to case, as jobs are
        if found is None:
            known = ", ".join(names) or "none"
            raise ConfigError(
                f"--profile: no protocol profile {profile!r} (config.xml defines: {known})"
            )
        names = [found.name]
    engine = Engine(config)
    try:
        reports = await collect_reports(config, engine.state.identities, names)
    finally:
        await engine.close()
    failed = any(r.problems for r in reports)
    if as_json:
        out: dict[str, Any] = {
            "ok": not failed,
            "config_warnings": list(config.warnings),
            "profiles": [r.to_dict() for r in reports],
        }
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        for warning in config.warnings:
            print(f"config warning: {warning}")
        if not reports:
            print("no protocol profiles in config.xml")
        for report in reports:
            print(report.format_text())
            print()
        print("problems found" if failed else "all profiles fine")
    return 1 if failed else 0
