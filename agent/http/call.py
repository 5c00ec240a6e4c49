"""Run one job: pick its identity and SNI, send the request, read a bounded answer, make a Result.

``Caller.run(job)`` never raises for a job's own trouble: every failure becomes a Result with an
``error`` of the contract's kinds. Only cancellation propagates. A failed attempt is retried only
when its kind is retryable (``ErrorKind.retryable``) and no byte of an answer had arrived.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from agent.config.config import ProfileConfig
from agent.errors import AgentError, CallError, ErrorKind, JobError, TLSError
from agent.http.aiohttp_adapter import answer_started, mark_answered, protocol_of
from agent.http.classify import (
    NOT_RETRIED,
    Attempt,
    classify,
    request_error,
)
from agent.http.policy import CallState, Route
from agent.http.soap import UsernameToken, build_request, parse_response
from agent.http.transport import MAX_HEAD_BYTES, Transport, head_too_large, proxy_args
from agent.jobs.model import InlineProfile, Job
from agent.jobs.results import Result, SoapFault, TLSInfo
from agent.tls.context import choose_sni, is_ip_literal
from agent.tls.handshake import peer_names
from agent.tls.identities import Identity

log = logging.getLogger("agent.call")

# Statuses with which servers tell of a missing or refused client certificate (nginx answers 400,
# or its own 495 and 496; IIS 403.7), and what their page then says.
CERT_STATUSES = frozenset({400, 403, 495, 496})
CERT_PAGE_MARKERS = (b"ssl certificate", b"client certificate")
TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/soap+xml",
    "+json",
    "+xml",
)


@dataclass(slots=True)
class Prepared:
    route: Route
    method: str
    headers: dict[str, str]
    body: bytes | None
    identity_key: str


def _target(endpoint: str, profile_port: int) -> tuple[str, str, int]:
    """The https URL, host and port for a job (``<profile>://`` becomes https). Worked out once
    per route, so it needs no cache of its own."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    default_port = 443 if parts.scheme.lower() == "https" else profile_port
    port = parts.port or default_port
    netloc = parts.netloc.rpartition("@")[2]
    if parts.port is None and port != 443:
        netloc = f"{netloc}:{port}"
    return urlunsplit(("https", netloc, parts.path or "/", parts.query, "")), host, port


async def _route(job: Job, identity: Identity, state: CallState) -> Route:
    key = (identity.key, job.endpoint, job.sni)
    route = state.routes.get(key)
    if route is not None:
        return route
    url, host, port = _target(job.endpoint, identity.port)
    choice = choose_sni(host, job=job.sni, profile=identity.sni, global_enabled=state.sni_enabled)
    profile, inline = identity.profile, identity.key.startswith("inline:")
    trusted = identity.material.trust is not None
    # an identity's first job without SNI builds that context, off the loop and only once
    ctx = await identity.built_context(choice.send is not None or is_ip_literal(host))
    route = Route(
        url=url,
        host=host,
        port=port,
        server_hostname=choice.send if choice.send and choice.send != host else None,
        ssl=ctx,
        tls=TLSInfo(
            sni=choice.send,
            client_certificate=identity.client_subject,
            client_certificate_sha256=identity.client_fingerprint,
            pins_checked=bool(identity.pins),
        ),
        attempt=Attempt(host, port, choice.send, profile, identity.client_subject, inline, trusted),
    )
    state.remember(key, route)
    return route


@functools.lru_cache(maxsize=256)
def _is_text(content_type: str) -> bool:
    ct = content_type.lower()
    return any(t in ct for t in TEXT_TYPES)


class Caller:
    """Runs jobs over the transport. It keeps no configuration: each job comes with the call
    state it runs on, start to end, retries included."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def run(
        self,
        job: Job,
        state: CallState,
        attempts_before: int = 0,
        history: Sequence[dict[str, Any]] = (),
        requeue: bool = False,
    ) -> Result:
        """Run the job; the Result counts every attempt made. A failure that may be retried
        (its kind is retryable, no byte of an answer came, attempts are left) waits a back-off
        with full jitter: here, or, with ``requeue``, in the queue (the result comes back with
        ``retry_at`` after one attempt). ``history``: the failed attempts before this run;
        the result carries them, and this run's, whenever there was more than one attempt."""
        start = time.perf_counter()
        past = list(history)
        attempt = attempts_before
        while True:
            attempt += 1
            result, retryable = await self._attempt(job, state)
            again = retryable and attempt < job.max_attempts
            if again or past:
                past.append(_attempt_entry(attempt, result))
            if not again:
                break
            delay = backoff(attempt, *state.retry)
            if requeue:
                result.retry_at = time.time() + delay
                break
            await asyncio.sleep(delay)
        result.history = past
        result.attempts = attempt
        result.elapsed_ms = round((time.perf_counter() - start) * 1000, 3)
        return result

    async def run_once(self, job: Job, state: CallState) -> Result:
        return (await self._attempt(job, state))[0]

    async def _attempt(self, job: Job, state: CallState) -> tuple[Result, bool]:
        """One attempt: its Result, and whether it may be retried (its failure's kind is
        retryable and no byte of an answer had arrived)."""
        start = time.perf_counter()
        prepared: Prepared | None = None
        retry = False
        try:
            prepared = await self.prepare(job, state)
            result = await self._send(job, prepared, state)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a result
            answered = answer_started()  # reading clears it, for the next attempt
            err = await _failure(exc, job, prepared, answered, state)
            kind = err.kind
            assert kind is not None  # _failure only returns errors that end a job
            tls = prepared.route.tls if prepared is not None else TLSInfo()  # e.g. denied by name
            result = Result.failed(job.id, kind, err.message, tls=tls)
            retry = kind.retryable and not answered
        result.elapsed_ms = round((time.perf_counter() - start) * 1000, 3)
        return result, retry

    async def prepare(self, job: Job, state: CallState) -> Prepared:
        _check_destination(job, state)
        identity = await state.identities.for_job(job)
        try:
            route = await _route(job, identity, state)
        except ValueError as exc:  # e.g. a port out of range
            raise JobError("endpoint", f"not a usable URL: {exc}") from None
        headers = dict(job.headers)
        body = job.body
        if job.topic == "SOAPProbe":
            body, headers = _soap_request(job, headers, _username_token(job, identity, state))
        elif not any(k.lower() == "idempotency-key" for k in headers):
            headers["Idempotency-Key"] = job.id
        return Prepared(route, job.method, headers, body, identity.key)

    async def _send(self, job: Job, p: Prepared, state: CallState) -> Result:
        """One request. The job's timeout is aiohttp's total timeout: it covers connecting,
        the handshake, the request and reading the whole answer."""
        r = p.route
        kwargs = proxy_args(state.proxy)
        if r.server_hostname:
            kwargs["server_hostname"] = r.server_hostname
        entry = self.transport.acquire(state.network)
        try:
            async with entry.session.request(
                p.method,
                r.url,
                headers=p.headers,
                data=p.body,
                ssl=r.ssl,
                allow_redirects=False,
                timeout=_timeout(job.timeout),
                **kwargs,
            ) as resp:
                try:
                    return await self._answer(job, r, resp, state.max_response_bytes)
                except BaseException:
                    mark_answered()  # the head had come: whatever failed, do not retry
                    raise
        finally:
            self.transport.release(entry)

    async def _answer(self, job: Job, r: Route, resp: aiohttp.ClientResponse, limit: int) -> Result:
        """The Result of an answer whose head came: read its bounded body."""
        if head_too_large(resp.raw_headers):
            resp.close()
            raise CallError(
                ErrorKind.RESPONSE_TOO_LARGE,
                f"{r.host}:{r.port} answered with more than {MAX_HEAD_BYTES} bytes of headers, "
                f"the agent's bound; {NOT_RETRIED}",
            )
        tls = self.transport.observe(protocol_of(resp), r.tls)
        data = await _read_bounded(resp, limit, r.host)
        headers = {str(k): v for k, v in resp.headers.items()}  # plain keys, not istr
        fault = _soap_fault(job, data, r.host) if job.topic == "SOAPProbe" else None
        text = _as_text(data, resp.headers.get("Content-Type", ""), resp.charset)
        status = resp.status
        return Result(
            id=job.id,
            state="processed",
            status=status,
            headers=headers,
            body=text,
            body_base64=None if text is not None else base64.b64encode(data).decode(),
            soap_fault=fault,
            tls=tls,
            hint=_cert_page_hint(status, data, r) if status in CERT_STATUSES else None,
        )


async def _failure(
    exc: Exception, job: Job, prepared: Prepared | None, answered: bool, state: CallState
) -> AgentError:
    """The error a failed attempt ends with: the agent's own (an invalid request, a refused
    destination, a bound crossed), or a third-party failure classified into the call kinds."""
    if isinstance(exc, AgentError) and exc.kind is not None:
        return exc
    if prepared is None:
        log.exception("job %s: unexpected failure", job.id)
        return CallError(ErrorKind.CONNECT, f"unexpected failure: {exc!r}")
    r = prepared.route
    return await _explained(_classified(exc, r, answered), r, state)


def _check_destination(job: Job, state: CallState) -> None:
    """``agent.outbound.allow``, by name, before anything else happens for the job. The
    transport's resolver checks the addresses (``CallState.network``)."""
    if state.name_allow is not None:
        host = urlsplit(job.endpoint).hostname or ""
        state.name_allow.check_name(host, proxied=state.proxy is not None)


def _username_token(job: Job, identity: Identity, state: CallState) -> UsernameToken | None:
    """WS-Security credentials of the job's inline record or its protocol profile."""
    source: InlineProfile | ProfileConfig | None = job.inline_profile
    if source is None and identity.profile is not None:
        source = state.identities.profiles.get(identity.profile)
    if source is None or not source.wss_username or source.wss_password is None:
        return None
    return UsernameToken(source.wss_username, source.wss_password, source.wss_password_type)


async def _explained(err: AgentError, r: Route, state: CallState) -> AgentError:
    """A hostname mismatch found by OpenSSL does not say what the certificate is for: look.

    One extra handshake, only on this failure, presenting no client certificate.
    """
    if err.kind != ErrorKind.HOSTNAME_MISMATCH or "names:" in err.message or state.proxy:
        return err
    names = await peer_names(r.host, r.port, r.attempt.sni, state.resolve)
    if names is None:
        return err
    return TLSError(err.kind, f"{err.message} (the certificate is for: {names or 'no names'})")


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


def _classified(exc: Exception, r: Route, answered: bool) -> AgentError:
    if not answered and (refused := request_error(exc)) is not None:
        return refused  # aiohttp would not build the request from the job: nothing was sent
    try:
        return classify(exc, r.attempt, answered)
    except Exception:  # noqa: BLE001 - an unforeseen failure still ends as a result
        log.exception("cannot classify a failure calling %s:%d", r.host, r.port)
        kind = ErrorKind.BAD_RESPONSE if answered else ErrorKind.CONNECT
        return CallError(kind, f"call to {r.host}:{r.port} failed: {exc!r}")


def _cert_page_hint(status: int, data: bytes, r: Route) -> str | None:
    """A hint when a 400/403/495/496 page speaks of the client certificate (nginx: "400 No
    required SSL certificate was sent", "400 The SSL certificate error")."""
    page = data[:4096].lower()
    if any(marker in page for marker in CERT_PAGE_MARKERS):
        return f"the server answered {status} about the client certificate: {r.attempt.cert_hint}"
    return None


def backoff(attempt: int, base: float, cap: float) -> float:
    """The wait after the ``attempt``-th failure: exponential with full jitter, capped."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt - 1, 30)))


def _attempt_entry(attempt: int, result: Result) -> dict[str, Any]:
    """One attempt in a result's history."""
    error = result.error
    return {
        "attempt": attempt,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "kind": error.kind if error else None,
        "message": error.message if error else None,
        "status": result.status,
    }


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, host: str) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > limit:
        resp.close()
        raise CallError(
            ErrorKind.RESPONSE_TOO_LARGE,
            f"{host} answered {declared} bytes, over agent.max_response_bytes ({limit})",
        )
    if declared is not None and "Content-Encoding" not in resp.headers:
        return await resp.read()  # the parser stops at the declared length: within the limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            resp.close()
            raise CallError(
                ErrorKind.RESPONSE_TOO_LARGE,
                f"{host} answered more than agent.max_response_bytes ({limit} bytes)",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _as_text(data: bytes, content_type: str, charset: str | None) -> str | None:
    """The body as text when it is text, else None (the caller sends base64)."""
    if not data:
        return ""
    if content_type and not _is_text(content_type):
        return None
    try:
        return data.decode(charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        return None


def _soap_request(
    job: Job, headers: dict[str, str], security: UsernameToken | None
) -> tuple[bytes, dict[str, str]]:
    body, soap_headers = build_request(
        job.body, version=job.soap_version, action=job.soap_action, security=security
    )
    merged = {
        k: v for k, v in headers.items() if k.lower() not in {h.lower() for h in soap_headers}
    }
    merged.update(soap_headers)
    return body, merged


def _soap_fault(job: Job, data: bytes, host: str) -> SoapFault | None:
    answer = parse_response(data, version=job.soap_version)
    if answer.problem:
        log.warning("job %s: %s answered: %s", job.id, host, answer.problem)
    return answer.fault
