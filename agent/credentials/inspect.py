"""What ``agent validate`` says about a profile's material: pure logic, no I/O but the system CAs.

``inspect_profile`` reports the client certificate's names and dates, whether the key matches,
whether the chain was ordered and is complete, and whether the profile's truststore (or the
system CAs) verifies it. ``problems`` fail validation; ``warnings`` do not.
"""

from __future__ import annotations

import datetime as dt
import functools
import ssl
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification

from agent.credentials.chains import (
    days_phrase,
    describe,
    find_issuer,
    public_der,
    self_signed,
    whole_days,
)
from agent.credentials.formats import KeyMaterial
from agent.credentials.sources import ProfileMaterial
from agent.errors import AgentError


@dataclass(frozen=True)
class ProfileReport:
    name: str
    loaded: bool
    subject: str | None = None
    issuer: str | None = None
    sans: tuple[str, ...] = ()
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    days_left: int | None = None
    key_matches: bool | None = None
    chain: tuple[str, ...] = ()  # subjects, leaf → root
    chain_ordered: bool | None = None  # False: given out of order (and reordered)
    chain_complete: bool | None = None
    trusted: bool | None = None
    trust_source: str = "system CAs"
    checked_at: dt.datetime | None = None  # the "now" days_left counts from
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("not_before", "not_after", "checked_at"):
            out[key] = out[key].isoformat() if out[key] else None
        for key in ("sans", "chain", "notes", "problems", "warnings"):
            out[key] = list(out[key])
        out["ok"] = self.ok
        return out

    def format_text(self) -> str:
        state = "FAIL" if self.problems else "WARN" if self.warnings else "OK"
        lines = [f"profile {self.name}: {state}"]
        if self.subject is not None:
            lines += _details(self)
        lines += [f"  note:      {n}" for n in self.notes]
        lines += [f"  WARNING:   {w}" for w in self.warnings]
        lines += [f"  PROBLEM:   {p}" for p in self.problems]
        return "\n".join(lines)


def _details(r: ProfileReport) -> list[str]:
    days = days_phrase(r.not_after, r.checked_at) if r.not_after and r.checked_at else ""
    span = f"{r.not_before:%Y-%m-%d} → {r.not_after:%Y-%m-%d}" if r.not_after else ""
    order = "given out of order, reordered" if r.chain_ordered is False else "ordered"
    complete = "complete" if r.chain_complete else "its last issuer is not held here"
    verdict = "verified by" if r.trusted else "NOT verified by"
    return [
        f"  subject:   {r.subject}",
        f"  issuer:    {r.issuer}",
        f"  names:     {', '.join(r.sans) or '(no subjectAltName)'}",
        f"  valid:     {span} ({days})",
        f"  key:       {'matches the certificate' if r.key_matches else 'DOES NOT MATCH'}",
        f"  chain:     {' → '.join(r.chain)} ({complete}, {order})",
        f"  trust:     {verdict} {r.trust_source}",
    ]


def report_error(name: str, error: AgentError) -> ProfileReport:
    """The report for material that did not load."""
    return ProfileReport(name=name, loaded=False, problems=(str(error),))


def inspect_profile(
    name: str, material: ProfileMaterial, *, warn_days: int, now: dt.datetime | None = None
) -> ProfileReport:
    now = now or dt.datetime.now(dt.UTC)
    explicit = material.trust is not None
    anchors = material.trust if material.trust is not None else system_cas()
    plural = "s" if len(anchors) != 1 else ""
    source = f"truststore ({len(anchors)} certificate{plural})" if explicit else "system CAs"
    warnings = [
        f"truststore certificate {describe(c)} expired on {c.not_valid_after_utc:%Y-%m-%d}"
        for c in material.trust or ()
        if c.not_valid_after_utc < now
    ]
    client = material.client
    if client is None:
        notes = material.notes or ("no client certificate",)
        return ProfileReport(name, True, trust_source=source, notes=notes, warnings=tuple(warnings))
    found = _check_client(client, anchors, explicit, source, now, warn_days, warnings)
    leaf = client.leaf
    return ProfileReport(
        name=name,
        loaded=True,
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        sans=_sans(leaf),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        days_left=whole_days(leaf.not_valid_after_utc, now),
        key_matches=found.key_matches,
        chain=tuple(c.subject.rfc4514_string() for c in client.chain),
        chain_ordered=not client.reordered,
        chain_complete=found.chain_complete,
        trusted=found.trusted,
        trust_source=source,
        checked_at=now,
        notes=material.notes + client.notes,
        problems=found.problems,
        warnings=found.warnings,
    )


@dataclass(frozen=True)
class _Findings:
    key_matches: bool
    chain_complete: bool
    trusted: bool
    problems: tuple[str, ...]
    warnings: tuple[str, ...]


def _check_client(
    client: KeyMaterial,
    anchors: tuple[x509.Certificate, ...],
    explicit: bool,
    source: str,
    now: dt.datetime,
    warn_days: int,
    warnings: list[str],
) -> _Findings:
    """What is wrong with the client certificate and its chain, checked against ``anchors``
    (``explicit``: the profile's own truststore, whose failure to verify can be a problem)."""
    problems = _validity(client, now, warn_days, warnings)
    key_matches = public_der(client.key.public_key()) == public_der(client.leaf.public_key())
    if not key_matches:
        problems.append("the private key does not match the certificate")
    if client.reordered:
        warnings.append(
            "the certificate chain was given out of order (the agent reorders it; other tools "
            "may not): re-export it leaf → root"
        )
    complete = self_signed(client.chain[-1]) or find_issuer(client.chain[-1], anchors) is not None
    trusted, why = _verify(client, anchors, now)
    if not trusted:
        text, fatal = _trust_finding(client, anchors, source, why)
        (problems if fatal and explicit else warnings).append(text)
    return _Findings(key_matches, complete, trusted, tuple(problems), tuple(warnings))


def _validity(
    client: KeyMaterial, now: dt.datetime, warn_days: int, warnings: list[str]
) -> list[str]:
    """Problems for certificates out of their validity; warnings for those about to expire."""
    problems = []
    for n, cert in enumerate(client.chain):
        what = "the client certificate" if n == 0 else f"chain certificate {describe(cert)}"
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if now < start:
            problems.append(f"{what} is not valid yet (from {start:%Y-%m-%d %H:%M} UTC)")
        elif now > end:
            problems.append(f"{what} expired on {end:%Y-%m-%d} ({days_phrase(end, now)}): renew it")
        elif end - now <= dt.timedelta(days=warn_days):
            days = whole_days(end, now)
            warnings.append(
                f"{what} expires in {days} day{'' if days == 1 else 's'} (on {end:%Y-%m-%d}, "
                "within "
                f"mid.cert.expiry.warn_days={warn_days}): renew it"
            )
    return problems


def _trust_finding(
    client: KeyMaterial, anchors: tuple[x509.Certificate, ...], source: str, why: str
) -> tuple[str, bool]:
    """What to say when ``anchors`` do not verify the client chain, and whether it is a problem.

    The partner, not the agent, verifies the client chain, and the truststore is there for the
    server's: a partner that issued the client certificate holds its root, while the server's
    certificate comes from another CA. So a chain that does not reach any anchor is a warning
    naming the CA the partner must trust. It is a problem only when the chain does reach an
    anchor and still fails (an expired CA, a CA not allowed to issue): that is broken
    whoever verifies it.

    Naming the missing certificate: the agent cannot see it, so it cannot tell a root from an
    intermediate. The rule: the word "intermediate" is only used for a certificate present in
    the keystore that is a CA (basicConstraints CA=true) and not self-signed; the missing one
    is "the issuer '<name>'", and the advice covers both cases.
    """
    top = client.chain[-1]
    if any(top == c for c in anchors) or find_issuer(top, anchors) is not None:
        return f"the {source} does not verify the client chain ({why})", True
    if self_signed(top):
        return (
            f"the {source} does not verify the client chain: it ends at the root {describe(top)}, "
            f"which the {source} does not hold. That is expected when the partner issued the "
            f"client certificate: the partner must trust {describe(top)}",
            False,
        )
    issuer = f"'{top.issuer.rfc4514_string()}'"
    what = "the intermediate" if _is_ca(top) else "the client certificate"
    return (
        f"the {source} does not verify the client chain: the issuer {issuer} of {what} "
        f"{describe(top)} is in neither the keystore nor the {source}. The partner must trust "
        f"{issuer}; if the partner holds only the root above {issuer}, add {issuer} to the "
        f"keystore after {describe(top)}",
        False,
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _verify(
    client: KeyMaterial, anchors: tuple[x509.Certificate, ...], now: dt.datetime
) -> tuple[bool, str]:
    """Would ``anchors`` verify the client chain? Expiry is reported apart, so a leaf outside
    its validity is checked at the middle of its lifetime."""
    if not anchors:
        return False, "the truststore is empty"
    leaf = client.leaf
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    when = now if start <= now <= end else start + (end - start) / 2
    # Client certificates rarely carry what the web PKI profile demands (a SAN, for one): check
    # signatures, validity and CA basic constraints, not the web PKI's extension rules.
    ca_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, None
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(anchors)))
        .time(when)
        .extension_policies(
            ca_policy=ca_policy, ee_policy=verification.ExtensionPolicy.permit_all()
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, list(client.chain[1:]))
    except verification.VerificationError as exc:
        return False, str(exc).removeprefix("validation failed: ")
    return True, ""


_SAN_LABELS: dict[type, str] = {
    x509.DNSName: "DNS",
    x509.IPAddress: "IP",
    x509.RFC822Name: "email",
    x509.UniformResourceIdentifier: "URI",
}


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(f"{_SAN_LABELS[type(n)]}:{n.value}" for n in san if type(n) in _SAN_LABELS)


@functools.lru_cache(maxsize=1)
def system_cas() -> tuple[x509.Certificate, ...]:
    """The certificates OpenSSL's default verify paths hold (``SSL_CERT_FILE`` included)."""
    ctx = ssl.create_default_context()
    certs = []
    with warnings.catch_warnings():  # some bundled roots predate RFC 5280's rules; keep them
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for der in ctx.get_ca_certs(binary_form=True):
            try:
                certs.append(x509.load_der_x509_certificate(bytes(der)))
            except ValueError:
                continue
    return tuple(certs)
