"""``python -m bench.run --plots DIR``: the pictures in docs/PERFORMANCE.md, from the run's own
figures: the paced latency distribution (agent and bare aiohttp side by side, as CDFs) and the
agent's jobs/s against the number of profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LATENCY_PNG = "latency-cdf.png"
SCALE_PNG = "scale-profiles.png"


def latency_cdf(samples: dict[str, list[float]], out: Path) -> Path:
    """One CDF per name (seconds in, milliseconds shown)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, values in samples.items():
        ordered = sorted(v * 1000 for v in values)
        if not ordered:
            continue
        n = len(ordered)
        ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("share of jobs at or below")
    ax.set_title("Paced at half the agent's warm peak: queue → result vs due → answer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    path = out / LATENCY_PNG
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def scale(points: dict[int, float], out: Path) -> Path:
    """jobs/s by number of profiles (log x)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    xs = sorted(points)
    ax.plot(xs, [points[x] for x in xs], marker="o")
    for x in xs:
        ax.annotate(f"{points[x]:,.0f}", (x, points[x]), textcoords="offset points", xytext=(0, 6))
    ax.set_xscale("log")
    ax.set_xlabel("profiles, each its own client certificate, jobs spread round-robin")
    ax.set_ylabel("jobs/s after each profile's first handshake")
    ax.set_title("Agent throughput against the number of profiles")
    ax.grid(True, which="both", alpha=0.3)
    path = out / SCALE_PNG
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
