"""Whether a partner's server certificate is revoked: CRL files, OCSP and CRL distribution points.

``.revocation`` per profile: ``off`` (default), ``soft`` (no answer: go on, with a warning and a
metric), ``hard`` (no answer: the call fails, ``revocation_unknown``). A revoked certificate ends
the call in both with ``certificate_revoked``. Checked after the handshake and before any byte of
the request, once per connection. Sources, first answer wins:

1. ``.crl`` files (PEM or DER, several allowed), read again when they change;
2. the OCSP responder named in the certificate's Authority Information Access;
3. the CRLs at its CRL distribution points (``http://`` only).

Every CRL and OCSP answer must be signed by the certificate's issuer (or, for OCSP, by a responder
the issuer delegated to) and be current; fetched answers are kept until their next update (at
most ``MAX_CACHE`` seconds). Fetching is the caller's (``fetch``): it goes through the same
``agent.resolve`` and allow-list as the agent's calls.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

log = logging.getLogger("agent.revocation")

MAX_CACHE = 3600.0  # seconds a fetched answer is kept at most
NO_NEXT_UPDATE = 300.0  # ... and one without a next update
Fetch = Callable[[str, bytes | None], Awaitable[bytes]]  # GET (None) or POST an OCSP request

_ATTR = "agent_revocation"  # the attribute a context carries its policy in


@dataclass(frozen=True)
class RevocationPolicy:
    mode: str  # soft | hard
    crls: tuple[Path, ...]
    parameter: str  # the profile's .revocation parameter, for messages


def with_revocation(ctx: object, policy: RevocationPolicy) -> None:
    setattr(ctx, _ATTR, policy)


def revocation_of(ctx: object) -> RevocationPolicy | None:
    policy: RevocationPolicy | None = getattr(ctx, _ATTR, None)
    return policy


@dataclass(frozen=True)
class Outcome:
    status: str  # good | revoked | unknown
    source: str  # what said so (or, for unknown, what was tried and why it failed)
    revoked_at: dt.datetime | None = None

    def evidence(self, mode: str) -> str:
        """The result's ``tls.policy.revocation``: ``hard: good (ocsp http://...)``."""
        return f"{mode}: {self.status} ({self.source})"


class RevocationChecker:
    """Checks certificates; keeps CRL files, fetched CRLs and OCSP answers between calls."""

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self._files: dict[Path, tuple[float, x509.CertificateRevocationList | None]] = {}
        self._fetched: dict[str, tuple[float, x509.CertificateRevocationList]] = {}
        self._ocsp: dict[tuple[str, int], tuple[float, Outcome]] = {}
        self.on_soft_failure: list[Callable[[], None]] = []

    async def check(
        self, leaf: x509.Certificate, issuer: x509.Certificate | None, policy: RevocationPolicy
    ) -> Outcome:
        if issuer is None:
            return Outcome("unknown", "the issuer of the server's certificate was not found")
        tried: list[str] = []
        for path in policy.crls:
            found = self._crl_file(path, issuer, tried)
            if found is not None:
                return _by_crl(found, leaf, f"crl file {path}")
        for url in _ocsp_urls(leaf):
            outcome = await self._ocsp_answer(url, leaf, issuer, tried)
            if outcome is not None and outcome.status != "unknown":
                return outcome
        for url in _crl_urls(leaf):
            crl = await self._crl_from(url, issuer, tried)
            if crl is not None:
                return _by_crl(crl, leaf, f"crl {url}")
        return Outcome("unknown", "; ".join(tried) or "the certificate names no CRL or OCSP")

    def soft_failed(self) -> None:
        for callback in self.on_soft_failure:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a metrics listener must not fail the call
                log.exception("revocation: soft-failure listener failed")

    # ------------------------------------------------------------------ CRLs

    def _crl_file(
        self, path: Path, issuer: x509.Certificate, tried: list[str]
    ) -> x509.CertificateRevocationList | None:
        try:
            mtime = path.stat().st_mtime
        except OSError as exc:
            tried.append(f"crl file {path}: {exc.strerror}")
            return None
        held = self._files.get(path)
        if held is None or held[0] != mtime:
            try:
                held = (mtime, _parse_crl(path.read_bytes()))
            except (OSError, ValueError) as exc:
                held = (mtime, None)
                tried.append(f"crl file {path}: not a CRL ({exc})")
            self._files[path] = held
        crl = held[1]
        if crl is None:
            return None
        problem = _crl_problem(crl, issuer)
        if problem:
            tried.append(f"crl file {path}: {problem}")
            return None
        return crl

    async def _crl_from(
        self, url: str, issuer: x509.Certificate, tried: list[str]
    ) -> x509.CertificateRevocationList | None:
        held = self._fetched.get(url)
        if held is not None and held[0] > time.time():
            return held[1]
        try:
            crl = _parse_crl(await self.fetch(url, None))
        except Exception as exc:  # noqa: BLE001 - any failure is "no answer from there"
            tried.append(f"crl {url}: {_why(exc)}")
            return None
        problem = _crl_problem(crl, issuer)
        if problem:
            tried.append(f"crl {url}: {problem}")
            return None
        self._fetched[url] = (_keep_until(crl.next_update_utc), crl)
        return crl

    # ------------------------------------------------------------------ OCSP

    async def _ocsp_answer(
        self, url: str, leaf: x509.Certificate, issuer: x509.Certificate, tried: list[str]
    ) -> Outcome | None:
        key = (url, leaf.serial_number)
        held = self._ocsp.get(key)
        if held is not None and held[0] > time.time():
            return held[1]
        request = (
            ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
        )  # SHA-1 is what responders expect in the CertID; it identifies, it does not sign
        try:
            raw = await self.fetch(url, request.public_bytes(serialization.Encoding.DER))
            answer = ocsp.load_der_ocsp_response(raw)
        except Exception as exc:  # noqa: BLE001 - any failure is "no answer from there"
            tried.append(f"ocsp {url}: {_why(exc)}")
            return None
        problem = _ocsp_problem(answer, leaf, issuer)
        if problem:
            tried.append(f"ocsp {url}: {problem}")
            return None
        status = answer.certificate_status
        if status == ocsp.OCSPCertStatus.GOOD:
            outcome = Outcome("good", f"ocsp {url}")
        elif status == ocsp.OCSPCertStatus.REVOKED:
            outcome = Outcome("revoked", f"ocsp {url}", answer.revocation_time_utc)
        else:
            tried.append(f"ocsp {url}: the responder does not know the certificate")
            outcome = Outcome("unknown", f"ocsp {url}")
        self._ocsp[key] = (_keep_until(answer.next_update_utc), outcome)
        return outcome


def _parse_crl(data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN X509 CRL-----" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def _crl_problem(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> str | None:
    if crl.issuer != issuer.subject:
        return f"issued by {crl.issuer.rfc4514_string()}, not the certificate's issuer"
    if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        return "its signature is not the issuer's"
    nxt = crl.next_update_utc
    if nxt is not None and nxt < dt.datetime.now(dt.UTC):
        return f"out of date (next update was {nxt:%Y-%m-%d %H:%M} UTC)"
    return None


def _by_crl(crl: x509.CertificateRevocationList, leaf: x509.Certificate, source: str) -> Outcome:
    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    if entry is None:
        return Outcome("good", source)
    return Outcome("revoked", source, entry.revocation_date_utc)


def _ocsp_problem(
    answer: ocsp.OCSPResponse, leaf: x509.Certificate, issuer: x509.Certificate
) -> str | None:
    if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return f"the responder answered {answer.response_status.name.lower()}"
    if answer.serial_number != leaf.serial_number:
        return "the answer is about another certificate"
    signer = _ocsp_signer(answer, issuer)
    if signer is None:
        return "the answer is signed neither by the issuer nor by a responder it delegated to"
    if not _signed_by(signer, answer):
        return "its signature does not verify"
    now = dt.datetime.now(dt.UTC)
    nxt = answer.next_update_utc
    if nxt is not None and nxt < now:
        return "the answer is out of date"
    return None


def _ocsp_signer(answer: ocsp.OCSPResponse, issuer: x509.Certificate) -> x509.Certificate | None:
    """The issuer itself, or a certificate in the answer that the issuer signed for OCSP."""
    if answer.responder_name == issuer.subject:
        return issuer
    for cert in answer.certificates:
        if cert.issuer != issuer.subject:
            continue
        try:
            cert.verify_directly_issued_by(issuer)
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in usage:
            return cert
    key_hash = answer.responder_key_hash
    if key_hash is not None:
        ours = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
        if key_hash == ours:
            return issuer
    return None


def _signed_by(signer: x509.Certificate, answer: ocsp.OCSPResponse) -> bool:
    """Whether ``signer``'s key made the answer's signature (RSA or EC keys)."""
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    algorithm = answer.signature_hash_algorithm
    key = signer.public_key()
    data, signature = answer.tbs_response_bytes, answer.signature
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _ocsp_urls(leaf: x509.Certificate) -> list[str]:
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
        and d.access_location.value.startswith("http://")
    ]


def _crl_urls(leaf: x509.Certificate) -> list[str]:
    try:
        points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [
        name.value
        for point in points
        for name in point.full_name or ()
        if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("http://")
    ]


def _keep_until(next_update: dt.datetime | None) -> float:
    now = time.time()
    if next_update is None:
        return now + NO_NEXT_UPDATE
    return min(now + MAX_CACHE, next_update.timestamp())


def _why(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."
