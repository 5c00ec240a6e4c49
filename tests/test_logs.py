"""The daemon's log writer: every record written, in order, as one JSON object per line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from agent import logs


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
