"""The system CAs, for identities that name no truststore.

``SSLContext.load_default_certs`` parses the whole system bundle (some 140 CAs on Debian) into
each context it is called on: about 800 KiB and 45 ms per identity, so a thousand inline records
without a truststore would hold 800 MiB of copies of the same CAs. OpenSSL's hashed directory
(``/etc/ssl/certs``, one file per CA named by its subject's hash) is read lazily instead: a
context finds the CA a chain needs when it verifies one, and keeps what it found. Building such a
context costs nothing for trust.

The directory is used alone only when it holds every CA of the bundle (checked once per change
of either, by comparing the certificates themselves), so no CA trusted before stops being trusted;
otherwise each context loads the bundle as before and a warning says what that costs. Both
follow OpenSSL's defaults and ``SSL_CERT_FILE``/``SSL_CERT_DIR``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from agent.tls.filestamps import mtimes

log = logging.getLogger("agent.credentials")

_PEM = re.compile(rb"-----BEGIN (?:TRUSTED )?CERTIFICATE-----(.*?)-----END", re.DOTALL)
_HASHED = re.compile(r"^[0-9a-f]{8}\.\d+$")  # c_rehash / openssl rehash link names
_MAX_CA_FILE = 1024 * 1024  # a file in the CA directory, or the bundle, larger than this is skipped


@dataclass(frozen=True)
class SystemTrust:
    """How contexts trust the system CAs: the directory alone (``lazy``), or the bundle loaded
    into each one."""

    cafile: str | None
    capath: str | None
    lazy: bool
    why: str

    def load(self, ctx: ssl.SSLContext) -> None:
        if self.lazy:
            ctx.load_verify_locations(capath=self.capath)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)


def system_trust() -> SystemTrust:
    """The way to trust the system CAs now (decided again when the bundle or directory change)."""
    paths = ssl.get_default_verify_paths()
    named = tuple(Path(p) for p in (paths.cafile, paths.capath) if p is not None)
    return _decide(paths.cafile, paths.capath, mtimes(named))


@functools.lru_cache(maxsize=8)
def _decide(cafile: str | None, capath: str | None, _mtimes: tuple[float, ...]) -> SystemTrust:
    trust = _compare(cafile, capath)
    if trust.lazy:
        log.info("system CAs: %s", trust.why)
    else:
        log.warning(
            "system CAs: %s; each identity without a truststore loads the whole bundle "
            "(about 1 KiB per CA in every one)",
            trust.why,
        )
    return trust


def _compare(cafile: str | None, capath: str | None) -> SystemTrust:
    in_dir = _directory(capath) if capath else set()
    if not in_dir:
        return SystemTrust(cafile, capath, False, f"no hashed CA directory ({capath or 'none'})")
    bundle = _bundle(cafile) if cafile else set()
    missing = len(bundle - in_dir)
    if missing:
        return SystemTrust(
            cafile,
            capath,
            False,
            f"{missing} of the {len(bundle)} CAs of {cafile} are not in {capath}",
        )
    source = f", which holds all {len(bundle)} of {cafile}" if bundle else ""
    return SystemTrust(cafile, capath, True, f"looked up on demand in {capath}{source}")


def _digests(data: bytes) -> set[str]:
    """The SHA-256 of each PEM certificate's DER in ``data``. Not parsed: compared as bytes
    (some system CAs carry encodings a parser warns about, yet OpenSSL accepts them)."""
    found = set()
    for block in _PEM.findall(data):
        try:
            der = base64.b64decode(block, validate=False)
        except ValueError:
            continue
        found.add(hashlib.sha256(der).hexdigest())
    return found


def _read(path: Path, limit: int) -> bytes | None:
    """The file's bytes; b"" when it cannot be read, None when it is over ``limit``."""
    try:
        if path.stat().st_size > limit:
            return None
        return path.read_bytes()
    except OSError:
        return b""


def _directory(capath: str) -> set[str]:
    """The certificates OpenSSL's lookup can find in ``capath`` (its hash-named files)."""
    try:
        names = [n for n in os.listdir(capath) if _HASHED.match(n)]
    except OSError:
        return set()
    found: set[str] = set()
    for name in names:
        found |= _digests(_read(Path(capath, name), _MAX_CA_FILE) or b"")
    return found


def _bundle(cafile: str) -> set[str]:
    data = _read(Path(cafile), 64 * _MAX_CA_FILE)
    if data is None:
        return {"too large"}  # too large to compare: never taken as covered
    return _digests(data)
