"""The benchmark: ``python -m bench.run [--quick]``.

Starts its own nginx mTLS peer on 127.0.0.1, drives the real daemon as a subprocess against it,
and measures the same traffic with baseline clients (a bare aiohttp loop, a ``requests`` thread
pool, one ``curl`` per job, ``openssl s_time``) in the same run, so the printed ratios compare
like with like on whatever machine runs it. Not part of the test suite: it asserts nothing, it
prints figures and PASS/MISS against the targets of docs/PERFORMANCE.md.

- :mod:`bench.peer` — throwaway PKI and a minimal nginx (one kept-alive port, one closing port);
- :mod:`bench.clients` — the baselines;
- :mod:`bench.agentrun` — config.xml writers, enqueueing, running and measuring the daemon;
- :mod:`bench.run` — the scenarios, medians, the table and the targets.
"""
