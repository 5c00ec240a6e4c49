"""``python -m bench.identities``: what many credential identities cost, in one process.

Two scenarios against the bench nginx (mutual TLS, keep-alive, no session resumption), each with
its baseline run in the same script:

1. **Profiles round-robin.** ``k`` profiles (300 and 1,000 by default), each its own client
   certificate and SSL context, called round-robin for several rounds (each of whole passes
   over the profiles, 5,000 jobs or one pass). Printed per round: jobs/s, TLS handshakes per
   job (target: one per profile in the first round, then none) and jobs/s against the same
   jobs on one profile (target: at least 0.8 after the first round).
2. **Distinct inline records.** ``n`` jobs (10,000 by default) each carrying its own keystore (a
   client certificate of its own, PEM): jobs/s, key-material loads and SSL contexts built per
   second, and the peak resident memory the run added; baseline: the same jobs all carrying one
   record.
3. **System trust.** Contexts for identities without a truststore, built the way the agent
   does (the hashed CA directory, read on demand) and with ``load_default_certs`` (the whole
   bundle parsed into each): milliseconds and resident KiB per context.

The jobs run through the agent's engine (identities, routes, transport, call) without a queue:
what is measured is what identities cost, not the queue's round trips (``python -m bench.run``
measures the daemon whole).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop
from cryptography.hazmat.primitives import serialization

from agent.commands.demo.pki import CA
from agent.config.config import load_config
from agent.engine.engine import Engine
from agent.jobs.model import Job
from agent.tls.systemtrust import system_trust

from .agentrun import write_config
from .peer import HOST, PATH, BenchNginx, BenchPKI

TARGET_RATIO = 0.8
ROUND_JOBS = 5_000  # a round is this many jobs (whole passes over the profiles), at least one pass


@dataclass
class Round:
    jobs: int
    seconds: float
    handshakes: int

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def vm(field: str) -> float:
    """This process's ``VmRSS`` or ``VmHWM``, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run_jobs(engine: Engine, jobs: list[Job], concurrency: int) -> Round:
    """Run ``jobs`` with ``concurrency`` in flight; every one must succeed."""
    handshakes = 0

    def count(new: bool) -> None:
        nonlocal handshakes
        handshakes += new

    engine.transport.on_connection.append(count)
    pending = iter(jobs)
    failures: list[str] = []

    async def lane() -> None:
        for job in pending:
            result = await engine.run(job)
            if result.state != "processed" or result.status != 200:
                failures.append(f"{job.id}: {result.error}")

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    engine.transport.on_connection.remove(count)
    if failures:
        raise RuntimeError(f"{len(failures)} job(s) failed, first: {failures[0]}")
    return Round(len(jobs), seconds, handshakes)


def profile_jobs(n: int, port: int, profiles: int, tag: str) -> list[Job]:
    return [
        Job.from_dict(
            {
                "id": f"{tag}-{i}",
                "topic": "RESTProbe",
                "endpoint": f"https://{HOST}:{port}{PATH}",
                "protocol_profile": f"p{i % profiles}",
            }
        )
        for i in range(n)
    ]


async def profiles_scenario(
    work: Path, pki: BenchPKI, port: int, k: int, rounds: int, concurrency: int
) -> list[str]:
    n = k * max(1, ROUND_JOBS // k)  # whole passes over the profiles, long enough to time
    lines = [f"profiles round-robin: {k:,} profiles, {rounds} rounds of {n:,} jobs"]
    clients = pki.clients(work / f"clients-{k}", k)
    many = Engine(
        load_config(
            write_config(work / f"p{k}", pki, port=port, threads=8, profiles=k, clients=clients)
        )
    )
    one = Engine(load_config(write_config(work / "p1", pki, port=port, threads=8, profiles=1)))
    try:
        await run_jobs(one, profile_jobs(concurrency, port, 1, "warm"), concurrency)
        for r in range(rounds):
            spread = await run_jobs(many, profile_jobs(n, port, k, f"r{r}"), concurrency)
            single = await run_jobs(one, profile_jobs(n, port, 1, f"s{r}"), concurrency)
            ratio = spread.rate / single.rate
            verdict = ""
            if r > 0:
                verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
            lines.append(
                f"  round {r + 1}: {spread.rate:8,.0f} jobs/s, "
                f"{spread.handshakes / spread.jobs:.2f} handshakes/job; one profile "
                f"{single.rate:8,.0f} jobs/s; ratio {ratio:.2f} {verdict}"
            )
    finally:
        await many.close()
        await one.close()
    return lines


def inline_records(root: CA, n: int) -> list[bytes]:
    """``n`` PEM keystores (certificate + key), each a client certificate of its own."""
    out = []
    for i in range(n):
        issued = root.issue(f"inline-{i}", client=True)
        key = issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        out.append(issued.cert.public_bytes(serialization.Encoding.PEM) + key)
    return out


def inline_jobs(
    records: list[bytes], port: int, trust: str, pick: Callable[[int], int]
) -> list[Job]:
    return [
        Job.from_dict(
            {
                "id": f"inline-{i}",
                "topic": "RESTProbe",
                "endpoint": f"https://{HOST}:{port}{PATH}",
                "inline_profile": {
                    "keystore": {
                        "type": "pem",
                        "data_base64": base64.b64encode(records[pick(i)]).decode(),
                    },
                    "truststore_pem": trust,
                },
            }
        )
        for i in range(len(records))
    ]


async def inline_scenario(
    work: Path, pki: BenchPKI, root: CA, port: int, n: int, concurrency: int
) -> list[str]:
    records = inline_records(root, n)
    trust = pki.ca.read_text()
    distinct = inline_jobs(records, port, trust, lambda i: i)
    same = inline_jobs(records, port, trust, lambda i: 0)
    config = load_config(write_config(work / "inline", pki, port=port, threads=8))
    lines = [f"inline records: {n:,} jobs"]
    for label, jobs in (("one record", same), ("distinct records", distinct)):
        engine = Engine(config)
        before = vm("VmRSS")
        try:
            done = await run_jobs(engine, jobs, concurrency)
            builds = engine.state.identities.context_builds
        finally:
            await engine.close()
        lines.append(
            f"  {label:16}: {done.rate:8,.0f} jobs/s, {builds:,} builds "
            f"({builds / done.seconds:,.0f}/s), {done.handshakes / done.jobs:.2f} handshakes/job, "
            f"peak RSS +{max(0.0, vm('VmHWM') - before):.1f} MiB"
        )
    return lines


def system_trust_scenario(n: int) -> list[str]:
    """Build ``n`` contexts trusting the system CAs each way; time and memory per context."""
    trust = system_trust()
    lines = [f"system trust: {n} contexts each way ({trust.why})"]
    for label, load in (
        ("agent (directory)", trust.load),
        ("whole bundle", lambda c: c.load_default_certs(ssl.Purpose.SERVER_AUTH)),
    ):
        kept = []
        gc.collect()
        before = vm("VmRSS")
        start = time.perf_counter()
        for _ in range(n):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            load(ctx)
            kept.append(ctx)
        seconds = time.perf_counter() - start
        grown = vm("VmRSS") - before
        lines.append(
            f"  {label:17}: {seconds / n * 1000:6.2f} ms and {grown * 1024 / n:6.1f} KiB per "
            f"context, {kept[0].cert_store_stats()['x509']} CAs parsed in each"
        )
        del kept
    return lines


async def main_async(args: argparse.Namespace, work: Path) -> None:
    pki = BenchPKI.create(work / "pki")
    assert pki.root is not None
    root = pki.root
    with BenchNginx(work / "nginx", pki) as nginx:
        for k in args.profiles:
            for line in await profiles_scenario(
                work, pki, nginx.warm_port, k, args.rounds, args.concurrency
            ):
                print(line, flush=True)
        if args.system_trust:
            for line in system_trust_scenario(args.system_trust):
                print(line, flush=True)
        if args.inline:
            for line in await inline_scenario(
                work, pki, root, nginx.warm_port, args.inline, args.concurrency
            ):
                print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.identities", description=__doc__)
    parser.add_argument(
        "--profiles",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[300, 1000],
        help="profile counts, comma-separated",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inline", type=int, default=10_000, help="inline jobs (0: skip)")
    parser.add_argument(
        "--system-trust", type=int, default=200, help="contexts per system-trust way (0: skip)"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-identities-") as tmp:
        uvloop.run(main_async(args, Path(tmp)))  # the daemon's loop
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
