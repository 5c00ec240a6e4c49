"""What ``agent validate`` and the daemon's certificate check report for each profile."""

from __future__ import annotations

from dataclasses import replace

from agent.config.config import AgentConfig, ProfileConfig
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
    notes = [f"material from {source(config, profile)}"]
    if profile.pins:
        notes.append(
            f"server key pinned (mid.httpclient.protocol.{name}.pin): {', '.join(profile.pins)}; "
            "agent sni-check URL --profile prints the pin a server presents"
        )
    return tuple(notes)


def source(config: AgentConfig, profile: ProfileConfig) -> str:
    """Where the profile's key material comes from, in a line an operator can check."""
    if profile.store == "vault":
        vault = config.vault
        what = (
            f"KV {vault.kv_mount}/{profile.vault_path}"
            if profile.vault_path
            else f"PKI {profile.vault_pki} for {profile.vault_pki_common_name}"
        )
        return f"the vault at {vault.address} ({what}, {vault.login_method} login)"
    if profile.store == "cyberark":
        objects = [
            f"{label} object {ref}"
            for label, ref in (
                ("keystore", profile.cyberark_keystore_id),
                ("password", profile.cyberark_password_id),
            )
            if ref
        ]
        where = f"CyberArk CCP at {config.cyberark.endpoint} ({', '.join(objects)}"
        return where + (f", keystore file {profile.path})" if profile.path else ")")
    return f"files ({profile.path or profile.key})"
