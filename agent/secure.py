"""``secure="true"`` parameters: encrypted in place on start, decrypted only in memory.

The key is a Fernet key in ``<config.xml>.key`` beside config.xml, mode 0600, made on first need.
A config that cannot be rewritten (read-only file system) keeps working: the values are used in
memory and a warning says they stay in clear text on disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from lxml import etree

from .config import AgentConfig, Parameter, from_parameters, parse_parameters
from .errors import ConfigError

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
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:  # read-only directory (container, ProtectSystem=strict)
        log.warning(
            "cannot create %s (%s): secure parameters stay in clear text on disk and are used "
            "only in memory",
            path,
            exc.strerror,
        )
        return None
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    return Fernet(key)


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
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return from_parameters({}, base_dir=path.parent, env=env)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
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
        return from_parameters(params, base_dir=path.parent, env=env)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message.removeprefix('config: ')}") from None
