"""A new user's first hour, through the command line as it is typed: every mistake gets a
precise answer, and nothing runs silently on defaults nobody asked for."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent.commands.cli import build_parser
from agent.commands.demo.demoserver import DemoServer
from agent.commands.demo.pki import CA
from tests.support.cli import agent_cmd, arun_agent, run_agent
from tests.support.configs import profile_config, write_config
from tests.support.pki import PKI

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
P = "mid.httpclient.protocol"


# ------------------------------------------------------- 1. a client chain the partner completes


def partner_issued(tmp_path: Path) -> Path:
    """The normal case: the partner issued the client certificate from its own root (which
    only the partner holds); the server's certificate comes from another CA."""
    partner_root = CA("Partner Root CA")
    server_ca = CA("Public Server CA")
    crt, key = partner_root.issue("edge-1.example", client=True).write_pem(tmp_path, "client")
    (tmp_path / "server-ca.pem").write_bytes(server_ca.cert_pem())
    return write_config(
        tmp_path,
        {
            "url": f"sqlite:///{tmp_path / 'queue.db'}",
            "agent.log.format": "json",
            f"{P}.partner.path": str(crt),
            f"{P}.partner.key": str(key),
            f"{P}.partner.truststore": "server-ca.pem",
        },
    )


def test_validate_leaves_the_partners_root_to_the_partner(tmp_path: Path) -> None:
    config = partner_issued(tmp_path)
    ran = run_agent("-c", str(config), "validate")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "profile partner: WARN" in ran.stdout and "all profiles fine" in ran.stdout
    assert "The partner must trust 'CN=Partner Root CA,O=Agent Test PKI'" in ran.stdout
    assert "PROBLEM" not in ran.stdout and "intermediate" not in ran.stdout


async def test_daemon_start_up_check_logs_it_as_a_warning(tmp_path: Path) -> None:
    config = partner_issued(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MID_CONFIG_")}
    proc = await asyncio.create_subprocess_exec(
        *agent_cmd("-c", str(config), "run"), stderr=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stderr is not None
    try:
        lines = []
        async with asyncio.timeout(60):
            while not any("partner must trust" in line.get("msg", "") for line in lines):
                raw = await proc.stderr.readline()
                assert raw, f"the agent ended before its certificate check: {lines}"
                lines.append(json.loads(raw))
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    [finding] = [line for line in lines if "partner must trust" in line["msg"]]
    assert finding["level"] == "warning" and finding["msg"].startswith("profile partner: ")
    assert not [line for line in lines if line["level"] == "error"], lines


# --------------------------------------------------------- 2. no silent defaults, no stray dirs


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--burst"],
        ["enqueue", "-"],
        ["result", "x"],
        ["call", "-"],
        ["validate"],
        ["sni-check", "https://127.0.0.1:1/"],
    ],  # fmt: skip
)
def test_a_named_config_that_does_not_exist_is_exit_2(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "etc" / "agent" / "config.xml"
    ran = run_agent("-c", str(missing), *command, input="{}", cwd=tmp_path)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert f"-c/--config: {missing} does not exist" in ran.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


def test_demo_refuses_a_named_config_it_would_ignore(tmp_path: Path) -> None:
    for named in (tmp_path / "missing.xml", tmp_path):
        ran = run_agent("-c", str(named), "demo", cwd=tmp_path)
        assert ran.returncode == 2, ran.stdout + ran.stderr
        assert "agent demo runs on embedded defaults" in ran.stderr and str(named) in ran.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


def test_agent_config_variable_that_does_not_exist_is_exit_2(tmp_path: Path) -> None:
    env = dict(os.environ, AGENT_CONFIG=str(tmp_path / "nope.xml"))
    ran = subprocess.run(
        agent_cmd("validate"), capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert ran.returncode == 2 and f"$AGENT_CONFIG: {tmp_path / 'nope.xml'} does not exist" in (
        ran.stderr
    )


def test_without_a_named_config_a_missing_config_xml_means_defaults(tmp_path: Path) -> None:
    ran = run_agent("validate", cwd=tmp_path)
    assert ran.returncode == 0 and "no protocol profiles" in ran.stdout, ran.stderr


def test_a_queue_directory_that_does_not_exist_is_refused_not_made(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"url": "sqlite:///state/queue.db"})
    for command in (["run", "--burst"], ["result", "x"]):
        ran = run_agent("-c", str(config), *command)
        assert ran.returncode == 2, ran.stderr
        assert "parameter url: the queue's directory" in ran.stderr
        assert f"{tmp_path / 'state'} does not exist" in ran.stderr
        assert not (tmp_path / "state").exists()


# ------------------------------------------------------------ 3. profile names, any letter case


async def test_profile_names_match_without_regard_to_case(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = profile_config(tmp_path, pki, mtls_server.port)
    jobs = [
        {"topic": "RESTProbe", "endpoint": "Partner://alpha.test/echo"},
        {"topic": "RESTProbe", "endpoint": f"https://alpha.test:{mtls_server.port}/echo",
         "protocol_profile": "PARTNER"},
    ]  # fmt: skip
    for job in jobs:
        ran = await arun_agent("-c", str(config), "call", "-", input=json.dumps(job))
        result = json.loads(ran.stdout)
        assert ran.returncode == 0 and result["status"] == 200, ran.stdout + ran.stderr
        assert "CN=client-one" in result["tls"]["client_certificate"]
    ran = await arun_agent("-c", str(config), "validate", "--profile", "PaRtNeR")
    assert ran.returncode == 0 and "profile partner: OK" in ran.stdout, ran.stdout + ran.stderr


async def test_an_unknown_url_profile_names_the_endpoint_field(tmp_path: Path, pki: PKI) -> None:
    config = profile_config(tmp_path, pki, 443)
    job = {"topic": "RESTProbe", "endpoint": "PartnerB://alpha.test/"}
    ran = await arun_agent("-c", str(config), "call", "-", input=json.dumps(job))
    error = json.loads(ran.stdout)["error"]
    assert ran.returncode == 1 and error["kind"] == "unknown_profile"
    assert error["message"].startswith("job field 'endpoint': unknown protocol profile 'PartnerB'")
    assert "(config.xml defines: partner, two)" in error["message"]


def test_two_spellings_of_one_profile_are_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, {f"{P}.PartnerB.path": "a.p12", f"{P}.partnerb.port": "8443"})
    ran = run_agent("-c", str(config), "validate")
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert f"{P}.PartnerB.path" in ran.stderr and f"{P}.partnerb.port" in ran.stderr


# ---------------------------------------------------------------------- 5. the smaller things

EXIT_CODES = {  # from PRODUCT.md's command table
    "run": ["0 after a clean stop"],
    "enqueue": ["2 an invalid job, naming the field"],
    "result": ["0 done", "3 still pending", "4 unknown id"],
    "call": ["0 answered", "1 no answer"],
    "demo": ["0 when every demo job gave the expected answer"],
    "validate": ["0 every profile fine", "1 problems found", "2 when config.xml cannot be used"],
    "sni-check": ["0 the handshake", "1 a problem found", "2 the config is unusable or the "
                  "target cannot be reached"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(EXIT_CODES))
def test_help_describes_every_option_and_the_exit_codes(command: str) -> None:
    ran = run_agent(command, "--help")
    assert ran.returncode == 0
    text = " ".join(ran.stdout.split())
    for code in EXIT_CODES[command]:
        assert code in text, (code, ran.stdout)
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for action in sub.choices[command]._actions:
        assert action.help, f"{command}: {action.dest} has no description"
        for flag in action.option_strings or [action.dest]:
            assert flag in ran.stdout and action.help.split()[0] in text


def test_main_help_explains_config_lookup_and_exit_codes() -> None:
    ran = run_agent("--help")
    assert "a missing ./config.xml means the embedded defaults" in ran.stdout
    assert "3  agent result: still pending" in ran.stdout


def readme() -> str:
    return (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "line", ["env 'MID_CONFIG_threads.max=10' agent", "MID_CONFIG_threads__max=10 agent"]
)
def test_readme_environment_overrides_work_in_a_shell(tmp_path: Path, line: str) -> None:
    """The README's override lines, typed into sh: the start-up line shows 10 threads."""
    [written] = [ln for ln in readme().splitlines() if ln.strip().startswith(line)]
    command = written.strip().split("  #")[0].strip()
    config = write_config(tmp_path, {"url": "sqlite:///./queue.db"})
    command = command.replace(" agent ", f" {shlex.join(agent_cmd())} ", 1)
    command = command.replace("/etc/agent/config.xml", str(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MID_CONFIG_")}
    ran = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path
    )
    assert ran.returncode == 0, command + "\n" + ran.stderr
    assert "10 thread(s)" in ran.stderr, ran.stderr


def test_start_up_line_shows_the_queue_url_as_written(tmp_path: Path) -> None:
    for url in ("sqlite:///./queue.db", f"sqlite:///{tmp_path / 'abs.db'}"):
        config = write_config(tmp_path, {"url": url, "agent.log.format": "text"})
        ran = run_agent("-c", str(config), "run", "--burst")
        assert ran.returncode == 0, ran.stderr
        assert f"started: queue {url}, " in ran.stderr, ran.stderr


def test_log_format_switch(tmp_path: Path) -> None:
    """Tests capture stderr (no terminal): JSON lines unless agent.log.format=text."""
    lines = {}
    for fmt in ("text", "json", "auto"):
        extra = {} if fmt == "auto" else {"agent.log.format": fmt}
        config = write_config(tmp_path, {"url": "sqlite:///./queue.db", **extra})
        ran = run_agent("-c", str(config), "run", "--burst")
        assert ran.returncode == 0, ran.stderr
        lines[fmt] = [ln for ln in ran.stderr.splitlines() if "started" in ln]
    assert re.match(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    agent: agent ", lines["text"][0]
    )
    for fmt in ("json", "auto"):
        record = json.loads(lines[fmt][0])
        assert record["level"] == "info" and record["msg"].startswith("agent ")


def test_expired_yesterday_says_expired_1_day_ago(tmp_path: Path) -> None:
    ca = CA("Expiry CA")
    crt, key = ca.issue("old", client=True, not_before_days=-30, days=-1.5).write_pem(tmp_path, "c")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    config = write_config(
        tmp_path, {f"{P}.old.path": str(crt), f"{P}.old.key": str(key), f"{P}.old.truststore":
                   "ca.pem"}
    )  # fmt: skip
    ran = run_agent("-c", str(config), "validate")
    assert ran.returncode == 1
    assert "(expired 1 day ago)" in ran.stdout and "-2 days" not in ran.stdout, ran.stdout
    report = json.loads(run_agent("-c", str(config), "validate", "--json").stdout)
    assert report["profiles"][0]["days_left"] == -1


def test_health_port_is_9464_everywhere() -> None:
    for path in ("config.xml.example", "Dockerfile", "README.md", "systemd/agent.service"):
        text = (ROOT / path).read_text()
        assert "9464" in text and "9100" not in text, path


def test_unit_documentation_is_a_file_pip_installs(tmp_path: Path) -> None:
    """Documentation= names <prefix>/share/doc/...; the wheel carries exactly that file."""
    unit = (ROOT / "systemd/agent.service").read_text()
    [doc] = re.findall(r"^Documentation=file://(\S+)$", unit, re.M)
    assert doc.startswith("/usr/local/")  # the prefix ExecStart=/usr/local/bin/agent assumes
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        data = [n.split(".data/data/", 1)[1] for n in whl.namelist() if ".data/data/" in n]
        assert doc.removeprefix("/usr/local/") in data
        [name] = [n for n in whl.namelist() if n.endswith(doc.removeprefix("/usr/local/"))]
        assert whl.read(name) == (ROOT / "README.md").read_bytes()
