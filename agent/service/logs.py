"""Logging: ``agent.log.format`` = ``text`` or ``json`` lines; by default (``auto``) readable
text on a terminal, JSON lines otherwise."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from typing import Any

import orjson

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
EXTRA_FIELDS = ("worker", "job_id", "profile", "host", "outcome", "status", "duration_ms")
WORKER_ENV = "AGENT_WORKER_INDEX"  # set by the supervisor for each worker process


class WorkerField(logging.Filter):
    """Stamps every record of a worker process with its index (``agent.workers`` > 1)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _worker_index() -> int | None:
    value = os.environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() else None


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
        return orjson.dumps(out, default=str).decode()


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


class _Writer:
    """The daemon's log writer thread: takes records off the queue, formats them, and writes
    whatever has gathered in one write and one flush (a busy agent logs a line per job)."""

    _STOP = object()

    def __init__(self, records: queue.SimpleQueue[Any], handler: logging.StreamHandler[Any]):
        self.records = records
        self.handler = handler
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write out what is queued, then end the thread."""
        self.records.put(self._STOP)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            batch = [self.records.get()]
            while True:
                try:
                    batch.append(self.records.get_nowait())
                except queue.Empty:
                    break
            lines = [self._line(r) for r in batch if r is not self._STOP]
            if lines:
                try:
                    self.handler.stream.write("".join(lines))
                    self.handler.flush()
                except Exception:  # noqa: BLE001 - a closed stderr must not kill the thread
                    pass
            if any(r is self._STOP for r in batch):
                return

    def _line(self, record: logging.LogRecord) -> str:
        try:
            return self.handler.format(record) + "\n"
        except Exception:  # noqa: BLE001 - one unformattable record must not lose the rest
            return f"unformattable log record from {record.name}: {record.msg!r}\n"


_listener: _Writer | None = None


def _stop_listener() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()  # writes out what is queued
        _listener = None


def json_lines_for(log_format: str) -> bool | None:
    """``agent.log.format``: ``json`` → True, ``text`` → False, ``auto`` → None (by terminal)."""
    return {"json": True, "text": False}.get(log_format)


def setup_logging(level: str, *, json_lines: bool | None = None, background: bool = False) -> None:
    """Log to stderr; ``background`` (the daemon) formats and writes on a thread of its own.
    ``json_lines`` None: JSON unless stderr is a terminal."""
    global _listener
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    worker = _worker_index()
    tag = "" if worker is None else f"worker {worker} "
    handler.setFormatter(
        JSONFormatter()
        if json_lines
        else logging.Formatter(f"%(asctime)s %(levelname)-7s {tag}%(name)s: %(message)s")
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
        records: queue.SimpleQueue[Any] = queue.SimpleQueue()
        _listener = _Writer(records, handler)
        _listener.start()
        atexit.register(_stop_listener)
        root.handlers[:] = [_Handoff(records)]
    else:
        root.handlers[:] = [handler]
    if worker is not None:
        root.handlers[0].addFilter(WorkerField(worker))
    root.setLevel(LEVELS.get(level, logging.INFO))
