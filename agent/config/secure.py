"""``secure="true"`` parameters: encrypted in place on start, decrypted only in memory; and the
key that seals jobs' secrets in the queue (``JobKey``).

The key is a Fernet key in ``<config.xml>.key`` beside config.xml, mode 0600, made on first need.
A config that cannot be rewritten (read-only file system) keeps working: the values are used in
memory and a warning says they stay in clear text on disk.

The same key file seals the secret fields of queued jobs (``jobs.SECRET_FIELDS``); agents that
share one queue (PostgreSQL) need copies of the same file. Without a config.xml the key lives
beside the queue file (``<queue>.key``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken
from lxml import etree

from agent.config.config import AgentConfig, from_parameters, read_config
from agent.config.parameters import Parameter, parse_parameters
from agent.errors import ConfigError, QueueError

log = logging.getLogger("agent.config")
PREFIX = "encrypted:"


def key_path_for(config_path: Path) -> Path:
    return config_path.with_name(config_path.name + ".key")


def _load_key(path: Path, create: bool) -> Fernet | None:
    try:
        return Fernet(path.read_bytes().strip())
    except FileNotFoundError:
        if not create:
            return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"key file {path} is unusable ({exc.__class__.__name__})") from None
    try:
        return Fernet(make_key_file(path))
    except OSError as exc:  # read-only directory (container, ProtectSystem=strict)
        log.warning(
            "cannot create %s (%s): secure parameters stay in clear text on disk and are used "
            "only in memory",
            path,
            exc.strerror,
        )
        return None


def make_key_file(path: Path) -> bytes:
    """A new Fernet key in ``path`` (mode 0600), or the key another process just put there.

    Written whole to a private temporary file, then linked into place: a reader never sees a
    half-written key, and of two processes making it at once, both end up with the same one.
    """
    key = Fernet.generate_key()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes().strip()
    finally:
        os.unlink(tmp)
    return key


def _decrypt(params: dict[str, Parameter], fernet: Fernet | None, key_path: Path) -> None:
    for name, p in params.items():
        if not p.value.startswith(PREFIX):
            continue
        if fernet is None:
            raise ConfigError(
                f"is encrypted but {key_path} is missing", parameter=name, line=p.line
            )
        try:
            plain = fernet.decrypt(p.value[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise ConfigError(
                f"cannot be decrypted with {key_path} (was the key file replaced?)",
                parameter=name,
                line=p.line,
            ) from None
        params[name] = Parameter(name, plain, p.line, p.secure)


def _encrypt_in_place(path: Path, text: bytes, names: set[str], fernet: Fernet) -> None:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    tree = etree.fromstring(text, parser).getroottree()
    for elem in tree.getroot().iter("parameter"):
        if elem.get("name") in names:
            plain = elem.get("value") or ""
            elem.set("value", PREFIX + fernet.encrypt(plain.encode()).decode())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(etree.tostring(tree, xml_declaration=True, encoding="UTF-8"))
    os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)


def load_secure_config(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Load config.xml, encrypting plain ``secure="true"`` values in place first."""
    env = os.environ if env is None else env
    path = path.resolve()
    text = read_config(path)
    if text is None:
        return from_parameters({}, base_dir=path.parent, env=env)
    try:
        params = parse_parameters(text)
        plain_secure = {n for n, p in params.items() if p.secure and not p.value.startswith(PREFIX)}
        key_path = key_path_for(path)
        needs_key = plain_secure or any(p.value.startswith(PREFIX) for p in params.values())
        fernet = _load_key(key_path, create=bool(plain_secure)) if needs_key else None
        if plain_secure and fernet is not None:
            try:
                _encrypt_in_place(path, text, plain_secure, fernet)
                log.info("encrypted %d secure parameter(s) in %s", len(plain_secure), path)
            except OSError as exc:
                log.warning("cannot encrypt secure parameters in %s (%s)", path, exc.strerror)
        _decrypt(params, fernet, key_path)
        config = from_parameters(params, base_dir=path.parent, env=env)
        return dataclasses.replace(config, config_path=path)
    except ConfigError as exc:
        raise exc.located(path) from None


class SealBroken(Exception):
    """Sealed job secrets that this agent's key cannot open."""


class JobKey:
    """Seals a job's secret fields for the queue, and opens them again at claim.

    The key file is read on first need and made (0600) only by ``seal``: an agent whose jobs
    carry no secrets never touches it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fernet: Fernet | None = None
        self._mac: bytes | None = None

    def __repr__(self) -> str:
        return f"JobKey({str(self.path)!r})"

    def _load(self, create: bool) -> Fernet:
        if self._fernet is None:
            try:
                key = self.path.read_bytes().strip()
            except FileNotFoundError:
                if not create:
                    raise
                key = self._make()
            self._fernet = Fernet(key)
            self._mac = hmac.digest(key, b"agent job digest", "sha256")
        return self._fernet

    def _make(self) -> bytes:
        try:
            return make_key_file(self.path)
        except OSError as exc:
            raise QueueError(
                f"cannot create key file {self.path} ({exc.strerror}) to encrypt the job's "
                "secrets; jobs with secrets are never stored in clear text"
            ) from None

    def seal(self, secrets: dict[str, Any]) -> str:
        try:
            return self._load(create=True).encrypt(orjson.dumps(secrets)).decode()
        except (OSError, ValueError) as exc:
            raise QueueError(
                f"key file {self.path} is unusable ({exc.__class__.__name__})"
            ) from None

    def open(self, sealed: str) -> dict[str, Any]:
        """The secrets, or SealBroken naming the key file the agents must share."""
        for _ in (1, 2):  # the second time with the key file read again (copied in since)
            try:
                opened: dict[str, Any] = orjson.loads(self._load(create=False).decrypt(sealed))
                return opened
            except (OSError, ValueError, InvalidToken, orjson.JSONDecodeError):
                self._fernet = None
        raise SealBroken(
            "cannot decrypt the job's secrets: the agents sharing this queue need the same "
            f"key file {self.path}"
        )

    def digest(self, public: bytes, secrets: dict[str, Any]) -> str:
        """A digest of a job: SHA-256 of its public JSON, plus a keyed MAC of its secrets (a
        plain hash of a password would let anyone who reads the queue guess it offline)."""
        h = hashlib.sha256(public)
        if secrets:
            self._load(create=True)
            assert self._mac is not None
            h.update(hmac.digest(self._mac, orjson.dumps(secrets), "sha256"))
        return h.hexdigest()


def job_key_path(config: AgentConfig, queue_file: Path | None = None) -> Path:
    """Where the key sealing jobs' secrets lives: beside config.xml (the secure-parameter key),
    else beside the queue file, else in the config's directory."""
    if config.config_path is not None:
        return key_path_for(config.config_path)
    if queue_file is not None:
        return queue_file.with_name(queue_file.name + ".key")
    return config.base_dir / "agent-queue.key"


def private_file(path: Path) -> None:
    """Make ``path`` an empty 0600 file if it is missing; tighten it to 0600 if it exists
    readable by others (a file from an earlier version). SQLite gives a database's -wal and
    -shm files the database file's mode, so making it first is enough for all three."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = each.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(each, 0o600)
                log.warning("%s was mode %o; made 0600 (it holds job data)", each, mode)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s cannot be made mode 0600 (%s)", each, exc.strerror)
