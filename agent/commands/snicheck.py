"""``agent sni-check URL``: handshake with SNI and without, compare, and say what to set.

This automates the ``openssl s_client -servername`` comparison users used to run by hand. Both
comparison handshakes present the profile's client certificate (servers that require one would
otherwise refuse both) and accept any server certificate, so the certificate each way can be
shown. A third handshake is the one the config would make: the SNI the settings choose, the
profile's truststore (or the system CAs), then a ``HEAD /`` so that a refused client
certificate shows under TLS 1.3 too. Its verdict (trust, name, client certificate) and the
server's key pin close the report.

Exit codes: 0 the configured handshake succeeds, the server is trusted and carries the name;
1 a problem found (which one is printed: SNI, trust, name, client certificate); 2 the config is
unusable or the target cannot be reached (no address, no TCP connection).
"""

from __future__ import annotations

import ssl
import sys
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes

from agent.config.config import AgentConfig
from agent.credentials.memory import load_client_material
from agent.errors import AgentError, CallError, ConfigError, ErrorKind, TLSError
from agent.http.classify import Attempt, classify_ssl
from agent.tls.context import (
    SNIChoice,
    build_context,
    certificate_names,
    choose_sni,
    is_ip_literal,
    name_matches,
)
from agent.tls.handshake import Handshake, address_of, handshake, pin_of
from agent.tls.identities import Identities, Identity

EXIT_OK, EXIT_PROBLEM, EXIT_UNUSABLE = 0, 1, 2


def _inspection_context(identity: Identity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if identity.material.client is not None:
        load_client_material(ctx, identity.material.client)
    return ctx


def _trust_context(identity: Identity) -> ssl.SSLContext:
    """The profile's context, verifying the chain but leaving the name to ``_judge`` (so a
    wrong name and an untrusted chain are told apart)."""
    ctx = build_context(identity.material.client, identity.material.trust, send_sni=True)
    ctx.check_hostname = False
    return ctx


def diagnose(host: str, with_sni: Handshake, without: Handshake, profile: str | None) -> list[str]:
    setting = f"mid.httpclient.protocol.{profile}.sni" if profile else "the job's sni field"
    if is_ip_literal(host):
        return ["the URL host is an IP address: no SNI is ever sent to it"]
    if with_sni.cert is None and without.cert is None:
        return ["both handshakes failed: this is not an SNI problem (see the errors above)"]
    if with_sni.cert is None:
        return [
            f"the server refuses SNI {host!r} but accepts no SNI: set {setting}=false, or "
            f"{setting}=<the name it expects>"
        ]
    matches = name_matches(with_sni.cert, host)
    advice = [] if matches else [f"warning: the certificate sent for SNI {host!r} does not name it"]
    if without.cert is None:
        return advice + [
            "SNI is REQUIRED: without it the handshake fails. Keep "
            f"glide.outbound.tls_sni.enabled=true (the default) or set {setting}=true"
        ]
    if without.cert.fingerprint(_sha256()) != with_sni.cert.fingerprint(_sha256()):
        return advice + [
            "SNI is REQUIRED: without it the server hands out a different certificate "
            f"({without.cert.subject.rfc4514_string()}). Keep glide.outbound.tls_sni.enabled=true "
            f"or set {setting}=true"
        ]
    return advice + ["SNI is not needed: the server sends the same certificate either way"]


def _sha256() -> hashes.HashAlgorithm:
    return hashes.SHA256()


async def _identity(config: AgentConfig, profile: str | None, scheme: str) -> Identity:
    """The profile from ``--profile`` or the URL's ``<profile>://`` (without regard to case);
    anything that stops it loading makes the config unusable for this check (exit 2)."""
    name, where = (profile, "--profile") if profile else (scheme, "the URL")
    credentials = Identities(config.profiles)
    if profile is None and scheme.lower() == "https":
        return credentials.default_identity()
    cfg = config.profile(name)
    if cfg is None:
        known = ", ".join(sorted(config.profiles)) or "none"
        raise ConfigError(f"{where}: no protocol profile {name!r} (config.xml defines: {known})")
    try:
        return await credentials.for_profile(cfg)
    except AgentError as exc:
        raise ConfigError(f"profile {cfg.name}: {exc}") from None


def _trust_source(identity: Identity) -> str:
    trust = identity.material.trust
    if trust is None:
        return "the system CAs"
    return f"the truststore ({len(trust)} certificate{'' if len(trust) == 1 else 's'})"


def _judge(
    seen: Handshake, cert_seen: Handshake, choice: SNIChoice, attempt: Attempt, source: str
) -> tuple[list[str], list[CallError]]:
    """Trust, name and client-certificate verdict of the configured handshake ``seen``;
    ``cert_seen`` is an unverified handshake with the same SNI, for the name when trust
    failed."""
    lines: list[str] = []
    problems: list[CallError] = []
    failure = classify_ssl(seen.ssl_error, attempt) if seen.ssl_error is not None else None
    if failure is None and seen.error is not None:  # dropped: no alert to read
        kind = ErrorKind.SNI_REQUIRED if choice.send is None else ErrorKind.TLS_HANDSHAKE
        failure = TLSError(kind, f"{attempt.host}:{attempt.port}: {seen.error}")
    if failure is None and _refused_in_answer(seen):
        who = attempt.client_subject or "none (no keystore in this profile)"
        failure = TLSError(
            ErrorKind.CLIENT_CERTIFICATE_REJECTED,
            f"the server answered {seen.status_line!r}: it did not accept the client "
            f"certificate {who}; check that the partner trusts its issuer",
        )
    verify_failed = isinstance(seen.ssl_error, ssl.SSLCertVerificationError)
    if seen.status_line is not None:
        lines.append(f"answer:    {seen.status_line}")
    if seen.cert is not None:
        lines.append(f"trust:     verified by {source}")
    elif verify_failed:
        lines.append(f"trust:     NOT verified by {source}")
    cert = seen.cert or cert_seen.cert
    if cert is not None:
        names = ", ".join(certificate_names(cert)) or "(no subjectAltName)"
        if name_matches(cert, choice.verify_name):
            lines.append(f"name:      the certificate names {choice.verify_name!r}")
        else:
            lines.append(
                f"name:      the certificate does NOT name {choice.verify_name!r} ({names})"
            )
            problems.append(
                TLSError(
                    ErrorKind.HOSTNAME_MISMATCH,
                    f"the server's certificate is not valid for {choice.verify_name!r} "
                    f"(certificate names: {names})",
                )
            )
        lines.append(f"pin:       {pin_of(cert)}")
    if failure is not None:
        problems.insert(0, failure)
    return lines, problems


def _refused_in_answer(seen: Handshake) -> bool:
    """nginx finishes the handshake whatever the client certificate and then answers 400 with
    "The SSL certificate error" or "No required SSL certificate was sent"."""
    line = seen.status_line or ""
    return line.split(" ")[1:2] == ["400"] and b"SSL certificate" in (seen.answer or b"")


async def run_sni_check(config: AgentConfig, url: str, *, profile: str | None) -> int:
    written = url if "://" in url else f"https://{url}"
    parts = urlsplit(written)
    if not parts.hostname:
        raise ConfigError(f"sni-check: cannot find a host in the URL {url!r}")
    identity = await _identity(config, profile, written.split("://", 1)[0])
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else identity.port)
    try:
        addr = await address_of(host, port, dict(config.resolve))
    except OSError as exc:
        print(f"agent: sni-check: cannot resolve {host!r}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    ctx = _inspection_context(identity)
    with_sni = await handshake(addr, port, host, ctx)
    without = await handshake(addr, port, None, ctx)
    if not with_sni.reached and not without.reached:
        print(f"agent: sni-check: cannot reach {host}:{port} ({addr}): {with_sni.error}",
              file=sys.stderr)  # fmt: skip
        return EXIT_UNUSABLE
    via = f", profile {identity.profile}" if identity.profile else ""
    print(f"sni-check {host}:{port} (address {addr}){via}")
    for hs in (with_sni, without):
        print("\n".join(hs.describe()))
    print("diagnosis:")
    for line in diagnose(host, with_sni, without, identity.profile):
        print(f"  {line}")
    return await _configured(identity, addr, port, host, with_sni, without, config.sni_enabled)


async def _configured(
    identity: Identity,
    addr: str,
    port: int,
    host: str,
    with_sni: Handshake,
    without: Handshake,
    sni_enabled: bool,
) -> int:
    """The handshake the config would make, its verdict, and the exit code."""
    choice = choose_sni(host, job=None, profile=identity.sni, global_enabled=sni_enabled)
    seen = await handshake(addr, port, choice.send, _trust_context(identity), request_host=host)
    cert_seen = {host: with_sni, None: without}.get(choice.send)
    if cert_seen is None:  # a name sent instead of the host: look at what that name gets
        cert_seen = await handshake(addr, port, choice.send, _inspection_context(identity))
    client = identity.material.client
    attempt = Attempt(host, port, choice.send, identity.profile, client.subject if client else None)
    sent = f"SNI {choice.send!r}" if choice.send else "no SNI"
    print(f"as configured ({sent}, from the {choice.source} setting):")
    lines, problems = _judge(seen, cert_seen, choice, attempt, _trust_source(identity))
    for line in lines:
        print(f"  {line}")
    for problem in problems:
        print(f"  PROBLEM ({problem.kind}): {problem}")
    if not problems:
        print("  OK: the handshake succeeds, the server is trusted and carries the name")
    return EXIT_PROBLEM if problems else EXIT_OK
