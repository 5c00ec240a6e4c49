"""Run one fuzz target under atheris (libFuzzer, coverage-guided).

    python -m tests.fuzz.run TARGET WORKDIR [libFuzzer options...]

WORKDIR receives the inputs libFuzzer finds (``WORKDIR/corpus``) and any crash
(``WORKDIR/crash-*``); the seeds under ``tests/fuzz/corpus/TARGET`` are read, never written.
The agent's modules are instrumented for coverage; the exit status is 0 when no input broke
the target's contract in the time given (``-max_total_time=S``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import atheris

HERE = Path(__file__).parent
SEEDS, DICTS = HERE / "corpus", HERE / "dict"
DEFAULTS = ["-max_len=8192", "-timeout=30", "-rss_limit_mb=2048", "-print_final_stats=1"]


def main(argv: list[str]) -> None:
    target, workdir, options = argv[1], Path(argv[2]), argv[3:]
    with atheris.instrument_imports(include=["agent"]):
        from tests.fuzz.targets import TARGETS
    check = TARGETS[target]
    logging.disable(logging.CRITICAL)  # config warnings would flood the output
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    args = [argv[0], *DEFAULTS, f"-artifact_prefix={workdir}/"]
    args += [f"-dict={DICTS / target}.dict", *options]
    args += [str(corpus), str(SEEDS / target)]
    atheris.Setup(args, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
