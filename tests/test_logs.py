"""The daemon's log writer: every record written, in order, as one JSON object per line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from agent.service import logs


def test_the_background_writer_loses_nothing_and_keeps_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging._srcfile)
    try:
        logs.setup_logging("info", json_lines=True, background=True)
        log = logging.getLogger("agent.worker")
        for i in range(500):
            log.info("job %d: processed 200", i, extra={"job_id": f"j-{i}", "status": 200})
        log.error("a failure", exc_info=ValueError("secret-free detail"))
        logs._stop_listener()  # what exit does: write out what is queued
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging._srcfile = saved[2]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["job_id"] for line in lines[:-1]] == [f"j-{i}" for i in range(500)]
    assert lines[0]["msg"] == "job 0: processed 200" and lines[0]["status"] == 200
    assert lines[-1]["level"] == "error" and "ValueError: secret-free detail" in lines[-1]["exc"]


@pytest.mark.parametrize("json_lines", [True, False])
def test_a_worker_process_names_itself_on_every_line(
    monkeypatch: pytest.MonkeyPatch, json_lines: bool
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setenv("AGENT_WORKER_INDEX", "3")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup_logging("info", json_lines=json_lines)
        logging.getLogger("agent.worker").info("job j-1: processed 200", extra={"job_id": "j-1"})
        logging.getLogger("agent").warning("queue unreachable")
    finally:
        root.handlers[:], root.level = saved
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    if json_lines:
        assert [json.loads(line)["worker"] for line in lines] == [3, 3]
    else:
        assert all(" worker 3 agent" in line for line in lines), lines
