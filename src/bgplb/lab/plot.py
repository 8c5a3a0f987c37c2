"""`bgplb demo --plot FILE.png`: which server answered each client request, over time.

One row per server (and one for failed requests), one dot per request at its start time, the
demo's events as labelled vertical lines. matplotlib is an optional extra (`bgplb[plot]`) and
is imported only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bgplb.lab.probes import Answer


def plot_timeline(
    path: Path,
    answers: Sequence[Answer],
    events: Sequence[tuple[float, str]],
    t0: float,
    servers: int,
    router: str,
) -> None:
    """Write the timeline to `path` (PNG, or any format matplotlib knows by the suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 2.2 + 0.5 * servers))
    colors = plt.get_cmap("tab10")
    for i in range(1, servers + 1):
        xs = [a.t - t0 for a in answers if a.server == i]
        ax.scatter(xs, [i] * len(xs), s=8, color=colors(i - 1), label=f"srv{i}")
    failed = [a.t - t0 for a in answers if a.server is None]
    ax.scatter(failed, [0] * len(failed), s=14, marker="x", color="red", label="failed")
    top = servers + 0.6
    for k, (t, label) in enumerate(events):
        ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
        ax.text(t, top + 0.3 * (k % 4), label, fontsize=7, rotation=0, ha="left", va="bottom")
    ax.set_yticks(range(servers + 1), ["failed", *(f"srv{i}" for i in range(1, servers + 1))])
    ax.set_ylim(-0.6, top + 1.5)
    ax.set_xlabel("seconds since the demo started")
    ax.set_title(f"bgplb demo: which server answered each request (router: {router})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
