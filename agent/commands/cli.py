"""The command line: ``agent run | enqueue | result | call | demo | validate | sni-check |
jobs | status``.

Exit codes follow the contract. A config that cannot be used exits 2 with one line, no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

from agent.commands.intake import (
    INPUT_JOBS_FACTOR,
    check_profiles,
    check_size,
    input_limit,
    json_items,
)
from agent.config.config import DEFAULT_MAX_JOB_BYTES, AgentConfig
from agent.errors import AgentError, ConfigError, JobError
from agent.http.soap import build_request
from agent.jobs.model import Job
from agent.queues.base import STATES
from agent.service.logs import json_lines_for, setup_logging
from agent.service.tuning import open_files_needed, raise_open_files, tune_for_daemon

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_PENDING, EXIT_UNKNOWN = 0, 1, 2, 3, 4


def _config_path(args: argparse.Namespace) -> Path:
    """``-c``, else ``$AGENT_CONFIG``, else ``./config.xml``. Only the last may be missing (it
    means the embedded defaults): a file the user named must exist, or a typo would run
    silently on defaults."""
    if args.config:
        named, source = args.config, "-c/--config"
    elif os.environ.get("AGENT_CONFIG"):
        named, source = os.environ["AGENT_CONFIG"], "$AGENT_CONFIG"
    else:
        return Path("config.xml")
    path = Path(named)
    if not path.exists():
        raise ConfigError(f"{source}: {path} does not exist (create it, or fix the path)")
    return path


def _load(args: argparse.Namespace) -> AgentConfig:
    from agent.config.secure import load_secure_config

    return load_secure_config(_config_path(args))


def _read_input(name: str, limit: int) -> bytes:
    """The job input, refused unread past ``limit`` bytes."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with Path(name).open("rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise JobError("(file)", f"cannot read {name}: {exc.strerror}") from None
    if len(data) > limit:
        raise JobError(
            "(input)",
            f"is over {limit} bytes ({INPUT_JOBS_FACTOR} x agent.max_job_bytes): split it",
        )
    return data


def parse_jobs(
    data: bytes | str,
    *,
    max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
    profiles: Iterable[str] | None = None,
) -> list[Job]:
    """One job, a JSON array of jobs, or JSON lines; errors name the job and every bad field.

    ``profiles`` (config.xml's profile names), when given, must include every profile a job
    names; each job's stored form must fit in ``max_job_bytes``.
    """
    items, where = json_items(data.encode() if isinstance(data, str) else data)
    jobs = []
    for number, item in enumerate(items, 1):
        try:
            jobs.append(_admit(item, max_job_bytes, profiles))
        except JobError as exc:
            if len(items) == 1:
                raise
            raise exc.at(where.format(number)) from None
    return jobs


def _admit(item: Any, max_job_bytes: int, profiles: Iterable[str] | None) -> Job:
    job = Job.from_dict(item)
    check_size(item, job, max_job_bytes)
    if profiles is not None:
        check_profiles(job, profiles)
    if job.topic == "SOAPProbe":  # refuse an unusable body now, not when it runs
        build_request(job.body, version=job.soap_version, action=job.soap_action)
    return job


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


async def _with_queue(config: AgentConfig, fn: Any) -> Any:
    from agent.queues import open_queue

    queue = open_queue(config)
    await queue.open()
    try:
        return await fn(queue)
    finally:
        await queue.close()


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the daemon's loop: uvloop when it is installed (``AGENT_LOOP=asyncio`` opts out)."""
    if os.environ.get("AGENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.service.runtime import Daemon

    config = _load(args)
    setup_logging(config.log_level, json_lines=json_lines_for(config.log_format), background=True)
    for warning in config.warnings:
        import logging

        logging.getLogger("agent.config").warning("%s", warning)
    if config.workers > 1 and "AGENT_WORKER_INDEX" not in os.environ:
        from agent.service.supervisor import Supervisor

        supervisor = Supervisor(_config_path(args), config.workers, burst=args.burst)
        return asyncio.run(supervisor.run())
    daemon = Daemon(config, _config_path(args), burst=args.burst)
    raise_open_files(open_files_needed(config))
    tune_for_daemon()
    return run_loop(daemon.run())


def cmd_enqueue(args: argparse.Namespace) -> int:
    config = _load(args)
    limit = config.max_job_bytes
    data = _read_input(args.file, input_limit(limit))
    jobs = parse_jobs(data, max_job_bytes=limit, profiles=config.profiles)
    ids = asyncio.run(_with_queue(config, lambda q: q.enqueue(jobs)))
    for job_id in ids:
        print(job_id)
    return EXIT_OK


def cmd_result(args: argparse.Namespace) -> int:
    config = _load(args)

    async def poll(queue: Any) -> int:
        deadline = time.monotonic() + (args.wait or 0)
        delay = 0.05
        while True:
            status = await queue.status(args.id)
            if status is None:
                print(f"unknown job id {args.id!r}", file=sys.stderr)
                return EXIT_UNKNOWN
            if status.result is not None:
                _print_json(status.result.to_dict())
                return EXIT_OK
            if time.monotonic() >= deadline:
                _print_json({"id": args.id, "state": status.state})
                return EXIT_PENDING
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    code: int = asyncio.run(_with_queue(config, poll))
    return code


def cmd_call(args: argparse.Namespace) -> int:
    from agent.engine.engine import Engine

    config = _load(args)
    setup_logging(config.log_level, json_lines=json_lines_for(config.log_format))
    limit = config.max_job_bytes
    jobs = parse_jobs(_read_input(args.file, input_limit(limit)), max_job_bytes=limit)
    if len(jobs) != 1:
        raise JobError("(input)", f"agent call runs one job; {len(jobs)} were given")

    async def once() -> int:
        engine = Engine(config)
        try:
            result = await engine.run(jobs[0])
        finally:
            await engine.close()
        _print_json(result.to_dict())
        return EXIT_OK if result.state == "processed" else EXIT_FAIL

    return asyncio.run(once())


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.commands.demo.demo import run_demo

    if args.config:  # the demo makes its own config: a named one would be silently ignored
        raise ConfigError(
            f"-c/--config: agent demo runs on embedded defaults and reads no config.xml "
            f"(drop -c {args.config}; use agent validate or agent run for that file)"
        )
    return asyncio.run(run_demo(keep=args.keep))


def cmd_validate(args: argparse.Namespace) -> int:
    from agent.commands.validate import run_validate

    config = _load(args)
    return asyncio.run(run_validate(config, profile=args.profile, as_json=args.json))


def cmd_sni_check(args: argparse.Namespace) -> int:
    from agent.commands.snicheck import run_sni_check

    config = _load(args)
    return asyncio.run(run_sni_check(config, args.url, profile=args.profile))


def cmd_jobs(args: argparse.Namespace) -> int:
    from agent.commands.jobs import MAX_LIMIT, run_jobs

    if not 1 <= args.limit <= MAX_LIMIT:
        raise ConfigError(f"--limit: must be 1 to {MAX_LIMIT}, got {args.limit}")
    config = _load(args)
    return asyncio.run(run_jobs(config, state=args.state, limit=args.limit, as_json=args.json))


def cmd_status(args: argparse.Namespace) -> int:
    from agent.commands.status import run_status

    config = _load(args)
    return asyncio.run(run_status(config, as_json=args.json))


CONFIG_EXIT = "2 when config.xml cannot be used (or the file -c/$AGENT_CONFIG names is missing)"
EPILOGS = {
    "run": f"exit codes: 0 after a clean stop (SIGTERM/SIGINT drains, SIGHUP reloads); "
    f"1 a runtime failure (queue unreachable, health port taken); {CONFIG_EXIT}",
    "enqueue": f"exit codes: 0 enqueued (ids printed, one a line); 2 an invalid job, naming "
    f"the field (nothing is enqueued); {CONFIG_EXIT}",
    "result": f"exit codes: 0 done (the result JSON); 3 still pending; 4 unknown id; {CONFIG_EXIT}",
    "call": f"exit codes: 0 answered (an HTTP error status is an answer); 1 no answer "
    f"(result.error says why); 2 an invalid job; {CONFIG_EXIT}",
    "demo": "exit codes: 0 when every demo job gave the expected answer; 1 otherwise",
    "validate": f"exit codes: 0 every profile fine (warnings allowed); 1 problems found; "
    f"{CONFIG_EXIT}",
    "sni-check": "exit codes: 0 the handshake the config would make succeeds, the server is "
    "trusted and carries the name; 1 a problem found (SNI, trust, name, client certificate "
    "refused); 2 the config is unusable or the target cannot be reached",
    "jobs": f"exit codes: 0 listed; 1 the queue cannot list (unreachable, or the ECC queue); "
    f"{CONFIG_EXIT}",
    "status": "exit codes: 0 healthy; 1 degraded (not ready, or a client certificate within "
    "mid.cert.expiry.warn_days); 2 unreachable (the daemon on agent.health.listen, or the queue) "
    "or config.xml unusable",
}
MAIN_EPILOG = """\
config: -c/--config FILE, else $AGENT_CONFIG, else ./config.xml. A file named by -c or
$AGENT_CONFIG must exist; a missing ./config.xml means the embedded defaults.
MID_CONFIG_<parameter> overrides a parameter (a double underscore may stand for each dot).

exit codes (each command's --help has its own):
  0  success
  1  a failure or problem found (see the command)
  2  config.xml unusable, or invalid input (the message names the parameter or field)
  3  agent result: still pending
  4  agent result: unknown id"""


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    name: str,
    help_text: str,
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        parents=[common],
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=EPILOGS[name],
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="config.xml to use (default: $AGENT_CONFIG, else ./config.xml; a file named "
        "here or in $AGENT_CONFIG must exist)",
    )
    parser = argparse.ArgumentParser(
        prog="agent",
        description="Forwarding agent: REST and SOAP over mutual TLS from a queue.",
        parents=[common],
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _command(sub, common, "run", "the daemon: poll the queue, run jobs, report results")
    p.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    p.set_defaults(fn=cmd_run)
    p = _command(sub, common, "enqueue", "validate jobs and put them in the queue")
    p.add_argument("file", help="a JSON job, a JSON array of jobs or JSON lines; - for stdin")
    p.set_defaults(fn=cmd_enqueue)
    p = _command(sub, common, "result", "print a job's result JSON")
    p.add_argument("id", help="the job id (as printed by enqueue)")
    p.add_argument("--wait", type=float, default=0, metavar="S", help="wait up to S seconds for it")
    p.set_defaults(fn=cmd_result)
    p = _command(sub, common, "call", "run one job now, without the queue, and print its result")
    p.add_argument("file", help="a JSON file holding one job; - for stdin")
    p.set_defaults(fn=cmd_call)
    p = _command(sub, common, "demo", "run end to end on embedded defaults (no config needed)")
    p.add_argument("--keep", action="store_true", help="keep the demo's directory afterwards")
    p.set_defaults(fn=cmd_demo)
    _inspection_commands(sub, common)
    return parser


def _inspection_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """The commands that look and change nothing: validate, sni-check, status."""
    p = _command(sub, common, "validate", "check config.xml and every keystore and truststore")
    p.add_argument("--profile", metavar="P", help="check only protocol profile P (any letter case)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(fn=cmd_validate)
    p = _command(
        sub, common, "sni-check", "handshake with and without SNI, and judge the configured one"
    )
    p.add_argument("url", help="https://host[:port]/ or <profile>://host[:port]/")
    p.add_argument(
        "--profile",
        metavar="P",
        help="present profile P's client certificate and use its truststore and SNI setting "
        "(default: the URL's <profile>://, else none and the system CAs)",
    )
    p.set_defaults(fn=cmd_sni_check)
    p = _command(sub, common, "jobs", "list the queue's jobs: state, attempts, last error")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N, newest first")
    p.add_argument("--json", action="store_true", help="print the jobs as JSON")
    p.set_defaults(fn=cmd_jobs)
    p = _command(sub, common, "status", "the running agent's summary: queue, errors, profiles")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=cmd_status)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        code: int = args.fn(args)
        return code
    except ConfigError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobError as exc:
        print(f"agent: invalid job: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AgentError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
