"""What ships under deploy/: the alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``), and every metric the rules and the Grafana dashboard use is one the
agent exports, every dashboard expression being valid PromQL (checked by promtool too).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.service.metrics import Metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "agent-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "agent-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "agent-dashboard.json"
METRIC = re.compile(r"\bagent_[a-z_]+\b")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: scripts/test installs Debian's prometheus package"
    return subprocess.run([tool, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def exported() -> set[str]:
    """The series names the agent's registry can expose (counters with ``_total``, histograms
    with ``_bucket``/``_count``/``_sum``), whether or not a value was recorded yet."""
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
    return names


def rule_expressions() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p["targets"]]


def test_the_alert_rules_load_in_promtool() -> None:
    ran = promtool("check", "rules", str(RULES))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS: 9 rules found" in ran.stdout


def test_the_alert_rules_fire_as_their_unit_tests_expect() -> None:
    ran = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout


def test_the_rules_cover_what_an_operator_must_hear_about() -> None:
    alerts = {name for name, _ in rule_expressions()}
    assert alerts == {
        "AgentClientCertificateExpiring",
        "AgentClientCertificateExpiresIn3Days",
        "AgentCertificateRenewalFailing",
        "AgentErrorRatioHigh",
        "AgentQueueBacklogOld",
        "AgentLeaseLosses",
        "AgentQueueUnreachable",
        "AgentVaultUnreachable",
        "AgentDown",
    }


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_used_is_one_the_agent_exports(source: str) -> None:
    expressions = rule_expressions() if source == "rules" else dashboard_expressions()
    known = exported()
    unknown = {
        (where, name)
        for where, expr in expressions
        for name in METRIC.findall(expr)
        if name not in known
    }
    assert not unknown, f"not exported by the agent: {sorted(unknown)}"
    assert len(expressions) >= 9


def test_the_dashboard_covers_the_agent_and_its_expressions_are_promql(tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    used = {name for _, expr in expressions for name in METRIC.findall(expr)}
    for needed in (
        "agent_jobs_total",  # throughput and errors by kind
        "agent_call_duration_seconds_bucket",  # latency quantiles
        "agent_client_certificate_days_left",
        "agent_queue_depth",
        "agent_queue_jobs",
    ):
        assert needed in used, needed
    # promtool parses PromQL in rule files: one recording rule per panel expression, with
    # Grafana's variables replaced by what they stand for.
    rules = [
        {
            "record": f"dashboard:expr_{i}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for i, (_, expr) in enumerate(expressions)
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    ran = promtool("check", "rules", str(path))
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_no_label_of_the_agents_metrics_can_grow_without_bound() -> None:
    """Prometheus naming: units in names, ``_total`` counters; labels come from bounded sets
    (topics, outcomes, error kinds, states, profiles in config.xml, targets capped at
    TARGET_SERIES), never job ids or URLs."""
    allowed = {"topic", "outcome", "error_kind", "profile", "state", "version", "target"}
    metrics = Metrics()
    for family in metrics.registry.collect():
        assert family.name.startswith("agent_"), family.name
    for attr in vars(metrics).values():
        names = getattr(attr, "_labelnames", ())
        assert set(names) <= allowed, names
    durations = [f.name for f in metrics.registry.collect() if f.type == "histogram"]
    assert all(name.endswith("_seconds") for name in durations), durations
