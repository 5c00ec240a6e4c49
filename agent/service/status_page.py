"""``/status`` as one HTML page: the status snapshot, readable on a phone, refreshing itself.

No script at all: the page reloads itself with ``<meta http-equiv="refresh">`` and is styled
inline, so it works behind any proxy and in any browser. Every value is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

REFRESH_SECONDS = 10

STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:0 12px 24px;color:#1d232a;
background:#f6f7f9}
h1{font-size:1.3em;margin:14px 0 4px}h2{font-size:1.05em;margin:22px 0 6px}
.state{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.healthy{background:#1f8a4c}.degraded{background:#c2410c}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.93em}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef0f3;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.ok td.days{color:#1f8a4c}tr.warn td.days{color:#b45309;font-weight:600}
tr.bad td.days,tr.bad td.name{color:#b91c1c;font-weight:600}
ul.problems{background:#fff4ed;border-left:4px solid #c2410c;padding:8px 8px 8px 28px;margin:8px 0}
.muted{color:#5f6b77}.wrap{overflow-x:auto}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dt{color:#5f6b77}dd{margin:0}
"""


def _table(headers: list[str], rows: list[str], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>'
    return f'<div class="wrap"><table class="{cls}"><tr>{head}</tr>{body}</table></div>'


def _cell(value: Any, cls: str = "") -> str:
    text = "–" if value is None or value == "" else str(value)
    return f'<td class="{cls}">{escape(text)}</td>' if cls else f"<td>{escape(text)}</td>"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _agent(status: dict[str, Any]) -> str:
    a, t = status["agent"], status["throughput"]
    items = [
        ("version", a["version"]),
        ("up for", _duration(a["uptime_seconds"])),
        ("workers", f"{a['workers']} process(es), {a['threads']} thread(s) each"),
        ("running now", a["running"]),
        (
            f"last {t['window_seconds'] // 60} min",
            f"{t['jobs']} job(s), {t['jobs_per_second']} jobs/s, "
            f"{t['errors']} error(s) ({t['error_ratio'] * 100:.1f} %)",
        ),
    ]
    pairs = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in items)
    return f'<dl id="agent">{pairs}</dl>'


def _queue(queue: dict[str, Any]) -> str:
    if not queue.get("available", True):
        return f'<p class="muted">{escape(str(queue.get("reason", "not available")))}</p>'
    rows = [
        f"<tr>{_cell(state)}{_cell(count, 'num')}</tr>"
        for state, count in queue.get("by_state", {}).items()
    ]
    oldest = queue.get("oldest_waiting_seconds")
    return _table(["state", "jobs"], rows) + (
        f"<p>oldest waiting job: {escape(_duration(oldest))}</p>" if oldest is not None else ""
    )


def _errors(errors: dict[str, Any]) -> str:
    kinds = [
        f"<tr>{_cell(k['kind'])}{_cell(k['count'], 'num')}{_cell(k['last']['at'])}"
        f"{_cell(k['last']['message'])}</tr>"
        for k in errors["by_kind"]
    ]
    last = [
        f"<tr>{_cell(e['at'])}{_cell(e['kind'])}{_cell(e['job_id'])}{_cell(e['message'])}</tr>"
        for e in errors["last"]
    ]
    return (
        "<h2>Errors by kind</h2>"
        + _table(["kind", "since start", "last at", "last message (what to change)"], kinds)
        + "<h2>Last errors</h2>"
        + _table(["at", "kind", "job", "message"], last)
    )


def _profiles(status: dict[str, Any]) -> str:
    rows = []
    for p in status["profiles"]:
        notes = "; ".join([*p.get("problems", []), *p.get("warnings", [])])
        days = p.get("days_left")
        rows.append(
            f'<tr class="{escape(p["level"])}">{_cell(p["name"], "name")}{_cell(p["source"])}'
            f"{_cell(p.get('subject'))}{_cell(p.get('issuer'))}{_cell(p.get('not_after'))}"
            f"{_cell(days, 'num days')}{_cell(notes)}</tr>"
        )
    return (
        "<h2>Profiles "
        f'<span class="muted">(warning at {status["cert_warn_days"]} days)</span></h2>'
        + _table(
            ["profile", "source", "subject", "issuer", "not after", "days left", "notes"],
            rows,
            "profiles",
        )
    )


def render(status: dict[str, Any]) -> str:
    a = status["agent"]
    problems = "".join(f"<li>{escape(p)}</li>" for p in status["problems"])
    extra = ""
    if status.get("vault") is not None:
        extra += f"<h2>Vault</h2><p>{escape(str(status['vault']))}</p>"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>{escape(a['name'])}: {escape(status['state'])}</title>"
        f"<style>{STYLE}</style></head><body>"
        f'<h1>{escape(a["name"])} <span class="state {escape(status["state"])}" id="state">'
        f"{escape(status['state'])}</span></h1>"
        f'<p class="muted">generated {escape(status["generated_at"])}, '
        f'refreshes every {REFRESH_SECONDS} s · <a href="status.json">status.json</a> · '
        '<a href="metrics">metrics</a></p>'
        + (f'<ul class="problems">{problems}</ul>' if problems else "")
        + _agent(status)
        + "<h2>Queue</h2>"
        + _queue(status["queue"])
        + _errors(status["errors"])
        + _profiles(status)
        + extra
        + "</body></html>"
    )
