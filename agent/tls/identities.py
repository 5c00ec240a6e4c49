"""Credential identities: which client certificate and trust store a job uses, built once.

An ``Identity`` is immutable: its key names the material it was built from (profile and
generation, or a digest of an inline record). Rotating material (SIGHUP, a changed keystore
file, a renewed vault certificate) makes a new identity with a new key; the transport never
hands a connection opened under one key to a job that needs another.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography.hazmat.primitives import hashes

from agent.config.config import AgentConfig, ProfileConfig
from agent.credentials.sources import ProfileMaterial, load_file_profile, load_inline
from agent.errors import AgentError, KeystoreError, UnknownProfileError
from agent.jobs.model import InlineProfile, Job
from agent.jobs.parse import SNI
from agent.tls.context import build_context, with_pins
from agent.tls.filestamps import STAT_INTERVAL, FileStamps, files_of, mtimes
from agent.tls.revocation import RevocationPolicy, with_revocation

log = logging.getLogger("agent.credentials")

INLINE_CACHE_SIZE = 256  # inline identities kept, LRU (agent.inline.max_identities)

# Loads a profile's material from somewhere other than files (the vault); set by the vault layer.
VaultLoader = Callable[[ProfileConfig], Awaitable[ProfileMaterial]]

# Generations are numbered process-wide, so identity keys never repeat, not even between the
# running credentials and a configuration staged beside them (``stage``).
_GENERATIONS = itertools.count(1)


@dataclass(slots=True)
class Identity:
    """One credential identity and its TLS contexts (one sending SNI, one not).

    The client certificate's facts every job needs (validity, subject, fingerprint) are read
    once, when the identity is made; the material itself stays as text (``KeyMaterial``).
    """

    key: str
    profile: str | None
    material: ProfileMaterial
    sni: SNI = None
    port: int = 443
    pins: tuple[str, ...] = ()  # the server's key must match one (``.pin``)
    revocation: RevocationPolicy | None = None  # is the server's certificate revoked?
    # not-before and not-after in seconds since the epoch; None: no client certificate
    validity: tuple[float, float] | None = field(init=False, default=None)
    client_subject: str | None = field(init=False, default=None)
    client_fingerprint: str | None = field(init=False, default=None)  # SHA-256, hex
    _contexts: dict[bool, ssl.SSLContext] = field(default_factory=dict, repr=False)
    _building: dict[bool, asyncio.Future[ssl.SSLContext]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        client = self.material.client
        if client is None:
            return
        leaf = client.leaf
        self.validity = leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp()
        self.client_subject = leaf.subject.rfc4514_string()
        self.client_fingerprint = leaf.fingerprint(hashes.SHA256()).hex()

    def contexts(self) -> list[ssl.SSLContext]:
        """The SSL contexts built so far (connections made with them are this identity's)."""
        return list(self._contexts.values())

    async def built_context(self, send_sni: bool) -> ssl.SSLContext:
        """``context``, built in a thread when it is not yet (parsing key material takes
        milliseconds), once however many jobs ask at the same time."""
        ctx = self._contexts.get(send_sni)
        if ctx is not None:
            return ctx
        building = self._building.get(send_sni)
        if building is None:
            building = asyncio.ensure_future(asyncio.to_thread(self.context, send_sni))
            self._building[send_sni] = building
            building.add_done_callback(lambda _: self._building.pop(send_sni, None))
        return await asyncio.shield(building)

    def context(self, send_sni: bool) -> ssl.SSLContext:
        ctx = self._contexts.get(send_sni)
        if ctx is None:
            ctx = build_context(self.material.client, self.material.trust, send_sni=send_sni)
            if self.pins:
                with_pins(ctx, self.pins, f"mid.httpclient.protocol.{self.profile}.pin")
            if self.revocation is not None:
                with_revocation(ctx, self.revocation)
            self._contexts[send_sni] = ctx
        return ctx


def policy_of(profile: ProfileConfig) -> RevocationPolicy | None:
    """The profile's revocation check (None: ``off``)."""
    if profile.revocation == "off":
        return None
    parameter = f"mid.httpclient.protocol.{profile.name}.revocation"
    return RevocationPolicy(profile.revocation, profile.crls, parameter)


@dataclass
class _Cached:
    identity: Identity
    mtimes: tuple[float, ...]
    checked: float


class Identities:
    """The identities of one runtime state: finds a job's, loading material once, not per job.

    Built by the engine's assembly from a configuration's profiles; a reload builds a new one
    beside it (``stage`` loads its file-based profiles first), so nothing here is ever reloaded:
    only a changed keystore file or a renewed vault certificate replaces one profile's identity.
    """

    def __init__(
        self,
        profiles: Mapping[str, ProfileConfig],
        *,
        vault_loader: VaultLoader | None = None,
        on_rotate: Callable[[Identity], None] | None = None,
        staged: Staged | None = None,
        max_inline: int = INLINE_CACHE_SIZE,
    ) -> None:
        """``on_rotate`` is told of an identity no new job will use (its connections can
        close); ``staged``: these profiles' material, already loaded (``stage``)."""
        self.profiles = MappingProxyType(dict(profiles))
        self.vault_loader = vault_loader
        self.on_rotate = on_rotate
        self._generation = next(_GENERATIONS)
        self._profiles: dict[str, _Cached] = dict(staged.loaded) if staged is not None else {}
        self._inline: OrderedDict[str, Identity] = OrderedDict()
        self.max_inline = max_inline
        self._building: dict[
            str, asyncio.Future[Identity | None]
        ] = {}  # inline records being built
        self.context_builds = 0  # key material loaded and an SSL context built (for the bench)
        self._locks: dict[str, asyncio.Lock] = {}
        self._default: Identity | None = None
        self.stamps = FileStamps(self._watched)  # the loaded profiles' files, looked at together

    def profile(self, name: str) -> ProfileConfig | None:
        """The protocol profile called ``name``, matched without regard to case."""
        found = self.profiles.get(name)
        if found is not None:
            return found
        folded = name.casefold()
        return next((p for n, p in self.profiles.items() if n.casefold() == folded), None)

    def _rotated(self, identity: Identity) -> None:
        if self.on_rotate is not None:
            self.on_rotate(identity)

    def profile_for(self, job: Job) -> ProfileConfig | None:
        """The job's profile; names (``protocol_profile`` or a ``<profile>://`` endpoint) are
        matched without regard to case. An unknown one names the field that gave it."""
        scheme = job.endpoint.split("://", 1)[0]  # as written: urlsplit would lower-case it
        name, field = job.protocol_profile, "protocol_profile"
        if scheme.lower() != "https":
            if name and name.casefold() != scheme.casefold():
                raise UnknownProfileError(name, list(self.profiles))
            name, field = scheme, ("protocol_profile" if name else "endpoint")
        if name is None:
            return None
        profile = self.profile(name)
        if profile is None:
            raise UnknownProfileError(name, list(self.profiles), field=field)
        return profile

    async def for_job(self, job: Job) -> Identity:
        if job.inline_profile is not None:
            identity = await self._inline_identity(job.inline_profile, job.id)
        else:
            profile = self.profile_for(job)
            if profile is None:
                return self.default_identity()
            identity = await self.for_profile(profile)
        _check_validity(identity)
        return identity

    def default_identity(self) -> Identity:
        """No client certificate, system CAs: for https endpoints without a profile."""
        if self._default is None:
            material = ProfileMaterial(client=None, trust=None)
            self._default = Identity(f"default#{self._generation}", None, material)
        return self._default

    async def for_profile(self, profile: ProfileConfig) -> Identity:
        cached = self._profiles.get(profile.name)
        if cached is not None and time.monotonic() - cached.checked < STAT_INTERVAL:
            return cached.identity  # the common case: no lock, no file check due
        lock = self._locks.setdefault(profile.name, asyncio.Lock())
        async with lock:
            cached = self._profiles.get(profile.name)
            if cached is not None and not await self._changed(profile, cached):
                return cached.identity
            files = files_of(profile)
            stamps = await asyncio.to_thread(mtimes, files) if files else ()
            try:
                identity = await self._load_profile(profile)
            except AgentError as exc:
                if cached is None:
                    raise
                cached.mtimes = stamps  # tried once: again only when the files change again
                log.error(
                    "profile %s: its files changed but cannot be loaded (%s); new jobs keep "
                    "the material loaded before",
                    profile.name,
                    exc,
                )
                return cached.identity
            self._profiles[profile.name] = _Cached(identity, stamps, time.monotonic())
            if cached is not None:
                log.info("profile %s: key material changed; new connections use it", profile.name)
                self._rotated(cached.identity)
            return identity

    def replace_profile(self, name: str, material: ProfileMaterial) -> None:
        """Swap in rotated material (a renewed vault certificate) for new connections."""
        profile = self.profiles[name]
        old = self._profiles.get(name)
        self._generation = next(_GENERATIONS)
        key = f"profile:{name}#{self._generation}"
        identity = Identity(
            key, name, material, profile.sni, profile.port, profile.pins, policy_of(profile)
        )
        self._profiles[name] = _Cached(identity, (), time.monotonic())
        if old is not None:
            self._rotated(old.identity)

    async def _changed(self, profile: ProfileConfig, cached: _Cached) -> bool:
        now = time.monotonic()
        if now - cached.checked < STAT_INTERVAL:
            return False
        cached.checked = now
        files = files_of(profile)
        return bool(files) and await self.stamps.of(files) != cached.mtimes

    def _watched(self) -> Iterator[Path]:
        for name in self._profiles:
            if name in self.profiles:
                yield from files_of(self.profiles[name])

    async def _load_profile(self, profile: ProfileConfig) -> Identity:
        self.context_builds += 1
        if profile.store is not None:
            if self.vault_loader is None:
                raise KeystoreError(
                    f"profile {profile.name}",
                    f"its material is in {profile.store}: not loaded here",
                )
            material = await self.vault_loader(profile)
        else:
            material = await asyncio.to_thread(load_file_profile, profile)
        self._generation = next(_GENERATIONS)
        key = f"profile:{profile.name}#{self._generation}"
        identity = Identity(
            key, profile.name, material, profile.sni, profile.port, profile.pins, policy_of(profile)
        )
        await asyncio.to_thread(identity.context, True)  # build off the loop; fail early
        return identity

    async def _inline_identity(self, inline: InlineProfile, job_id: str) -> Identity:
        """The identity of an inline record, built once however many jobs carry it at once.

        Jobs arriving while the record is being built wait for that build. If it fails they
        build it themselves: a failure names the job whose build it was, and one job's error
        must not appear in another's result.
        """
        digest = _inline_digest(inline)
        identity = self._inline.get(digest)
        if identity is not None:
            self._inline.move_to_end(digest)
            return identity
        building = self._building.get(digest)
        if building is not None and (built := await asyncio.shield(building)) is not None:
            return built
        future: asyncio.Future[Identity | None] = asyncio.get_running_loop().create_future()
        self._building[digest] = future
        identity = None
        try:
            identity = await self._build_inline(inline, job_id, digest)
        finally:
            if self._building.get(digest) is future:
                del self._building[digest]
            future.set_result(identity)  # None: failed or cancelled, waiters build for themselves
        return identity

    async def _build_inline(self, inline: InlineProfile, job_id: str, digest: str) -> Identity:
        self.context_builds += 1
        material = await asyncio.to_thread(load_inline, inline, job_id)
        identity = Identity(f"inline:{digest[:16]}#{self._generation}", None, material, inline.sni)
        await asyncio.to_thread(identity.context, True)
        self._inline[digest] = identity
        while len(self._inline) > self.max_inline:
            _, old = self._inline.popitem(last=False)
            self._rotated(old)
        return identity


@dataclass(frozen=True)
class Staged:
    """A configuration's file-based profiles, loaded beside the running ones (``stage``)."""

    config: AgentConfig
    loaded: Mapping[str, _Cached]
    problems: dict[str, str]  # profile → why its material did not load
    store_profiles: tuple[str, ...]  # material in a vault or CCP: checked in the config only


async def stage(config: AgentConfig) -> Staged:
    """Load every file-based profile of ``config`` (keystore, key, truststore, TLS context)
    without touching the credentials in force, so a reload can be all or nothing.

    Vault and CyberArk profiles are not fetched: the store may be slow or briefly away, and a
    reload must not wait on it; their material is loaded on first use, as at start.
    """
    side = Identities(config.profiles)
    problems: dict[str, str] = {}
    vault: list[str] = []
    for name in sorted(config.profiles):
        profile = config.profiles[name]
        if profile.store is not None:
            vault.append(name)
            continue
        try:
            await side.for_profile(profile)
        except AgentError as exc:
            problems[name] = _naming(name, str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever breaks the load refuses the reload
            problems[name] = _naming(name, f"cannot be loaded ({exc.__class__.__name__}: {exc})")
    return Staged(config, MappingProxyType(dict(side._profiles)), problems, tuple(vault))


def _naming(profile: str, message: str) -> str:
    return message if message.startswith(f"profile {profile}") else f"profile {profile}: {message}"


def _check_validity(identity: Identity) -> None:
    """A client certificate outside its validity period is refused before any partner sees it."""
    validity = identity.validity
    if validity is None:
        return
    now = time.time()
    if validity[0] <= now <= validity[1]:
        return
    client = identity.material.client
    assert client is not None
    leaf = client.leaf
    if validity[1] < now:
        raise KeystoreError(
            client.origin,
            f"client certificate {client.subject} expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it (agent validate shows all)",
        )
    if validity[0] > now:
        raise KeystoreError(
            client.origin,
            f"client certificate {client.subject} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock or the certificate)",
        )


def _inline_digest(inline: InlineProfile) -> str:
    h = hashlib.sha256()
    for part in (
        inline.keystore_data,
        (inline.keystore_type or "").encode(),
        (inline.password or "").encode(),
        (inline.alias or "").encode(),
        inline.truststore_pem or b"",
    ):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()
