"""CyberArk's Central Credential Provider (CCP): a profile's keystore password, or the keystore
itself, as the ``Content`` of a CCP object.

The request is ``GET <ext.cred.ccp_endpoint>?AppID=..&Safe=..&Folder=..&Object=..`` over mutual
TLS: CCP knows the agent by its client certificate (``ext.cred.cyberark.cert_path``, PKCS#12,
loaded in memory) and its AppID. An answer is JSON with ``Content``; a refusal is HTTP 4xx/5xx
with ``ErrorCode`` and ``ErrorMsg`` (``APPAP004E``: no such object). Every failure becomes a
``CyberArkError`` (error kind ``cyberark``) naming the object and the ErrorCode, never a value.

What CCP returns is kept in memory for ``ext.cred.cyberark.cache_seconds`` and then fetched
again in the background; jobs never wait on CCP once a value is held. While CCP cannot answer,
the last good value stays in use and ``problems`` says so (for ``/readyz`` and a metric); a
changed value is handed to ``on_change`` so new connections use it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from agent.config.config import ProfileConfig
from agent.config.cyberark import CyberArkConfig
from agent.credentials.formats import load_keystore, load_truststore
from agent.credentials.memory import load_client_material, trust_pem
from agent.credentials.sources import PARAM, ProfileMaterial, load_file_profile
from agent.errors import AgentError, CyberArkError

log = logging.getLogger("agent.cyberark")

MAX_ANSWER = 1024 * 1024  # a CCP answer (a base64 keystore at most) is read up to this
PREFIX = "ext.cred."


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """A CCP object: ``object`` (in ``ext.cred.safe_name``) or ``safe:object``."""

    safe: str
    name: str

    @classmethod
    def parse(cls, text: str, default_safe: str | None, parameter: str) -> ObjectRef:
        safe, sep, name = text.strip().partition(":")
        if not sep:
            safe, name = default_safe or "", safe
        if not name or not safe:
            raise CyberArkError(
                f"{parameter}: {text!r} names no safe: write safe:object, or set {PREFIX}safe_name"
            )
        return cls(safe, name)

    def __str__(self) -> str:
        return f"{self.safe}:{self.name}"


@dataclass
class _Held:
    content: str = field(repr=False)
    fetched: float  # time.monotonic() of the last good answer
    error: str | None = None  # the last refresh's failure, while the old value is served


class CCP:
    """The agent's CCP client: fetches, caches and refreshes object contents."""

    def __init__(
        self,
        config: CyberArkConfig,
        *,
        resolver: AbstractResolver | None = None,
        check_host: Callable[[str], None] | None = None,
        on_change: Callable[[ObjectRef], Awaitable[None]] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        assert config.endpoint is not None
        self.config = config
        self.resolver = resolver
        self.check_host = check_host  # the allow-list's name check (raises AgentError)
        self.on_change = on_change
        self.on_error = on_error
        self._held: dict[ObjectRef, _Held] = {}
        self._locks: dict[ObjectRef, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.fetches = 0

    def ref(self, text: str, parameter: str) -> ObjectRef:
        return ObjectRef.parse(text, self.config.safe, parameter)

    async def content(self, ref: ObjectRef) -> str:
        """The object's ``Content``: held, or fetched now (once however many ask at once)."""
        held = self._held.get(ref)
        if held is not None:
            return held.content
        async with self._locks.setdefault(ref, asyncio.Lock()):
            held = self._held.get(ref)
            if held is None:
                held = _Held(await self.fetch(ref), time.monotonic())
                self._held[ref] = held
                self._start_refresher()
        return held.content

    def problems(self) -> list[str]:
        """Objects whose refresh failed and whose last good value is being served."""
        now = time.monotonic()
        return [
            f"object {ref}: {held.error}; serving the value fetched {now - held.fetched:.0f} s ago"
            for ref, held in sorted(self._held.items(), key=lambda item: str(item[0]))
            if held.error is not None
        ]

    async def refresh(self) -> None:
        """Fetch every held object again; a changed one goes to ``on_change``."""
        for ref, held in list(self._held.items()):
            try:
                content = await self.fetch(ref)
            except CyberArkError as exc:
                if held.error is None:
                    log.warning("%s; keeping the value fetched before", exc.message)
                held.error = exc.message
                if self.on_error is not None:
                    self.on_error()
                continue
            if held.error is not None:
                log.info("cyberark: object %s answers again", ref)
            changed = content != held.content
            self._held[ref] = _Held(content, time.monotonic())
            if changed and self.on_change is not None:
                log.info("cyberark: object %s changed; new connections use it", ref)
                await self.on_change(ref)

    def _start_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_loop(), name="cyberark-refresh"
            )

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.cache_seconds)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the refresher must outlive any one failure
                log.exception("cyberark: refreshing failed")

    async def fetch(self, ref: ObjectRef) -> str:
        """One request to CCP for ``ref``'s ``Content``."""
        self.fetches += 1
        query = {"AppID": self.config.app_id, "Safe": ref.safe, "Object": ref.name}
        if self.config.folder:
            query["Folder"] = self.config.folder
        where = f"cyberark: object {ref} (AppID {self.config.app_id})"
        endpoint = self.config.endpoint
        assert endpoint is not None
        try:
            if self.check_host is not None:
                self.check_host(URL(endpoint).host or "")
            session = await self._open()
            async with session.get(endpoint, params=query) as resp:
                body = await resp.content.read(MAX_ANSWER + 1)
                status = resp.status
        except AgentError as exc:
            raise CyberArkError(f"{where}: {exc.message}") from None
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as exc:
            reason = str(exc) or exc.__class__.__name__
            raise CyberArkError(f"{where}: cannot reach {endpoint}: {reason}") from None
        if len(body) > MAX_ANSWER:
            raise CyberArkError(f"{where}: the answer is over {MAX_ANSWER} bytes")
        return _content_of(where, status, body)

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            ctx = await asyncio.to_thread(self._context)
            connector = aiohttp.TCPConnector(ssl=ctx, resolver=self.resolver, limit=4)
            timeout = aiohttp.ClientTimeout(total=self.config.timeout)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, trust_env=False
            )
        return self._session

    def _context(self) -> ssl.SSLContext:
        c = self.config
        ctx = ssl.create_default_context()
        if c.truststore is not None:
            data = _read(c.truststore, f"{PREFIX}cyberark.truststore")
            trust = load_truststore(data, origin=f"{PREFIX}cyberark.truststore ({c.truststore})")
            ctx = ssl.create_default_context(cadata=trust_pem(trust))
        if not c.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if c.cert_path is not None:
            data = _read(c.cert_path, f"{PREFIX}cyberark.cert_path")
            material = load_keystore(
                data, origin=f"{PREFIX}cyberark.cert_path ({c.cert_path})", password=c.cert_password
            )
            load_client_material(ctx, material)
        return ctx

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._held.clear()  # secrets do not outlive the client


def object_refs(ccp: CCP, profile: ProfileConfig) -> list[ObjectRef]:
    prefix = f"{PARAM}.{profile.name}.cyberark."
    return [
        ccp.ref(text, prefix + key)
        for key, text in (
            ("password_id", profile.cyberark_password_id),
            ("keystore_id", profile.cyberark_keystore_id),
        )
        if text
    ]


async def cyberark_material(ccp: CCP, profile: ProfileConfig) -> ProfileMaterial:
    """A profile's material with its keystore password and/or keystore from CCP (the other
    parts, a truststore or a keystore file, from config.xml as usual)."""
    prefix = f"{PARAM}.{profile.name}.cyberark."
    password = keystore = None
    if profile.cyberark_password_id:
        password = await ccp.content(ccp.ref(profile.cyberark_password_id, prefix + "password_id"))
    if profile.cyberark_keystore_id:
        ref = ccp.ref(profile.cyberark_keystore_id, prefix + "keystore_id")
        text = await ccp.content(ref)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise CyberArkError(
                f"cyberark: object {ref}: its Content is not base64 (profile {profile.name}'s "
                "keystore)"
            ) from None
        keystore = (f"cyberark object {ref}", data)
    return await asyncio.to_thread(load_file_profile, profile, password=password, keystore=keystore)


def _read(path: Path, parameter: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CyberArkError(f"{parameter}: cannot read {path}: {exc.strerror}") from None


def _content_of(where: str, status: int, body: bytes) -> str:
    import json

    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status != 200:
        if isinstance(doc, dict) and doc.get("ErrorCode"):
            message = str(doc.get("ErrorMsg", ""))[:300]
            raise CyberArkError(f"{where}: CCP refused with {doc['ErrorCode']} ({message})")
        raise CyberArkError(f"{where}: CCP answered HTTP {status} without an ErrorCode")
    if not isinstance(doc, dict) or not isinstance(doc.get("Content"), str):
        raise CyberArkError(f"{where}: the answer has no Content (is the endpoint CCP's?)")
    content: str = doc["Content"]
    return content
