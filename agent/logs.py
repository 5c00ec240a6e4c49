"""Logging: readable text on a terminal, JSON lines otherwise."""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
EXTRA_FIELDS = ("job_id", "profile", "host", "outcome", "status", "duration_ms")


class JSONFormatter(logging.Formatter):
    _second = -1
    _stamp = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # a busy agent logs many lines a second: format it once
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class _Handoff(logging.handlers.QueueHandler):
    """Hands records to the writer thread with only the message merged and any traceback
    rendered, so the event loop neither formats JSON nor blocks on a slow stderr. It is the
    only handler, so the record is changed in place rather than copied."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_listener: logging.handlers.QueueListener | None = None


def _stop_listener() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()  # writes out what is queued
        _listener = None


def setup_logging(level: str, *, json_lines: bool | None = None, background: bool = False) -> None:
    """Log to stderr; ``background`` (the daemon) formats and writes on a thread of its own."""
    global _listener
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JSONFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    _stop_listener()
    root = logging.getLogger()
    if background:
        # No caller lookup, thread or process names per record: none of them is logged, and
        # working them out was a visible share of a busy agent's per-job cost.
        logging._srcfile = None  # the logging HOWTO's advice
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        _listener = logging.handlers.QueueListener(records, handler)
        _listener.start()
        atexit.register(_stop_listener)
        root.handlers[:] = [_Handoff(records)]
    else:
        root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
