"""Fuzzing the parsers of outside input: job JSON, enqueue input, config.xml, SOAP answers.

Each target (``tests/fuzz/targets.py``) runs under atheris for ``$AGENT_FUZZ_SECONDS`` seconds
(default 20), all four at once in subprocesses, and must exit clean: no input made its parser
raise anything but its own error, hang, or break an invariant. Every input that once did is
kept under ``tests/fuzz/regressions/<target>/`` and replayed here; ``scripts/fuzz`` runs the
fuzzers for longer.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands.cli import parse_jobs
from agent.config.config import AgentConfig
from agent.errors import ConfigError, JobError
from agent.http.soap import parse_response
from agent.jobs.model import Job
from tests.fuzz import targets
from tests.fuzz.targets import TARGETS, ContractBroken

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"
FUZZ_SECONDS = int(os.environ.get("AGENT_FUZZ_SECONDS", "20"))


def _inputs(kind: str) -> list[tuple[str, Path]]:
    return [(t, p) for t in TARGETS for p in sorted((FUZZ / kind / t).glob("*"))]


# ------------------------------------------------------------------ inputs that once crashed


@pytest.mark.parametrize(
    ("target", "path"), _inputs("regressions"), ids=lambda v: getattr(v, "name", v)
)
def test_a_once_crashing_input_keeps_the_contract(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


@pytest.mark.parametrize(("target", "path"), _inputs("corpus"), ids=lambda v: getattr(v, "name", v))
def test_every_seed_keeps_the_contract(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


def _regression(target: str, name: str) -> bytes:
    return (FUZZ / "regressions" / target / name).read_bytes()


@pytest.mark.parametrize("depth", [20_000, 200_000])
def test_deeply_nested_json_is_refused_at_enqueue(depth: int) -> None:
    with pytest.raises(JobError, match="nested deeper than"):
        parse_jobs("[" * depth + "]" * depth)


def test_deep_json_on_a_later_line_is_refused_at_enqueue() -> None:
    with pytest.raises(JobError, match="nested deeper than"):
        parse_jobs(_regression("enqueue", "deep-second-line").decode())


def test_a_number_too_long_to_read_is_refused_at_enqueue() -> None:
    with pytest.raises(JobError, match="number") as info:
        parse_jobs(_regression("enqueue", "integer-of-5000-digits").decode())
    assert info.value.field == "(input)"


def test_an_empty_array_is_refused_at_enqueue() -> None:
    with pytest.raises(JobError, match="no job given"):
        parse_jobs(_regression("enqueue", "empty-array").decode())


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ({"body": "\ud800"}, "body"),
        ({"id": "a\udfffb"}, "id"),
        ({"headers": {"X-A": "\ud800"}}, "headers.X-A"),
        (
            {"inline_profile": {"keystore": {"data_base64": "AA==", "password": "\ud83d"}}},
            "inline_profile.keystore.password",
        ),
    ],
)
def test_a_lone_surrogate_is_refused_naming_the_field(job: dict[str, object], field: str) -> None:
    raw = {"topic": "RESTProbe", "endpoint": "https://a.example/", **job}
    with pytest.raises(JobError) as info:
        Job.from_dict(raw)
    assert info.value.field == field and "surrogate" in str(info.value)


def test_the_fuzzers_lone_surrogate_header_name_is_refused() -> None:
    with pytest.raises(JobError, match="surrogate") as info:
        parse_jobs(_regression("job", "header-name-lone-surrogate").decode())
    assert info.value.field == "(input)"  # the enqueue parser refuses it before any field is read


def test_a_lone_surrogate_body_is_refused() -> None:
    with pytest.raises(JobError, match="surrogate"):
        parse_jobs(_regression("job", "body-lone-surrogate").decode())


def test_a_home_of_no_known_user_names_the_parameter() -> None:
    xml, env = targets.split_config_input(_regression("config", "home-of-unknown-user"))
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_xml(xml, env=env)
    assert info.value.parameter == "mid.httpclient.protocol.a.path"
    assert "~param2ter" in str(info.value)


def test_a_vault_ca_under_a_home_of_no_known_user_names_the_parameter() -> None:
    xml = (
        b'<parameters><parameter name="ext.cred.hashicorp.vault.ca" value="~no-such-user/ca.pem"/>'
        b"</parameters>"
    )
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_xml(xml, env={})
    assert info.value.parameter == "ext.cred.hashicorp.vault.ca"


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_an_answer_with_an_undeclared_prefix_is_not_soap(version: str) -> None:
    answer = parse_response(_regression("soap", "unbound-prefix"), version=version)
    assert answer.fault is None
    assert answer.problem is not None and "not well-formed XML" in answer.problem


def test_a_soap_body_with_an_undeclared_prefix_is_refused_at_enqueue() -> None:
    body = _regression("soap", "unbound-prefix").decode()
    job = {"topic": "SOAPProbe", "endpoint": "https://a.example/", "soap_version": "1.2"}
    with pytest.raises(JobError, match="not well-formed XML") as info:
        parse_jobs(json.dumps({**job, "body": body}))
    assert info.value.field == "body"


# --------------------------------------------------------------- the contract checks themselves


def test_the_job_contract_catches_a_password_in_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def leaky(raw: dict[str, object]) -> Job:
        raise JobError("inline_profile", f"bad {raw['inline_profile']}")

    monkeypatch.setattr(Job, "from_dict", staticmethod(leaky))
    with pytest.raises(ContractBroken, match="secret"):
        targets.check_job((FUZZ / "corpus" / "job" / "inline").read_bytes())


def test_the_config_contract_catches_a_password_in_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def leaky(params: dict[str, targets.Any], **_: object) -> AgentConfig:
        raise ConfigError(", ".join(p.value for p in params.values()))

    monkeypatch.setattr(targets, "from_parameters", leaky)
    with pytest.raises(ContractBroken, match="secret"):
        targets.check_config((FUZZ / "corpus" / "config" / "env-overrides").read_bytes())


# ---------------------------------------------------------------------------- the fuzz runs


@pytest.fixture(scope="module")
def fuzz_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Path, subprocess.Popen[bytes]]]]:
    """All four targets fuzzing at once, each for FUZZ_SECONDS."""
    base = tmp_path_factory.mktemp("fuzz")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    runs = {}
    for target in TARGETS:
        work = base / target
        work.mkdir()
        log = (work / "log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "tests.fuzz.run",
            target,
            str(work),
            f"-max_total_time={FUZZ_SECONDS}",
        ]
        runs[target] = (
            work,
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
        )
        log.close()
    yield runs
    for _, proc in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _explain(work: Path) -> str:
    found = [
        p for p in work.iterdir() if p.name.split("-")[0] in ("crash", "timeout", "oom", "leak")
    ]
    lines = (work / "log").read_text(errors="replace").splitlines()
    text = "\n".join(lines[-40:])
    for path in found:
        data = path.read_bytes()
        text += (
            f"\n{path.name} ({len(data)} bytes, base64): {base64.b64encode(data[:2048]).decode()}"
        )
        text += "\nadd it under tests/fuzz/regressions/<target>/ and fix the parser"
    return text


@pytest.mark.timeout(FUZZ_SECONDS + 180)
@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzzing_finds_no_broken_contract(
    target: str, fuzz_runs: dict[str, tuple[Path, subprocess.Popen[bytes]]]
) -> None:
    work, proc = fuzz_runs[target]
    code = proc.wait()
    assert code == 0, _explain(work)
    assert "Done " in (work / "log").read_text(errors="replace"), _explain(work)
