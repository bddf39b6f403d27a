"""report.png: throughput and latency of every server on short queries, with the in-process floor."""

from __future__ import annotations

from pathlib import Path

from bench.report import NAMES, Report

COLOURS = {"ours": "tab:blue", "naive": "tab:orange", "pytorch": "tab:red"}


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ["ours", *report.baselines]:
        levels = report.runs[name].workloads["short"]
        x, colour = [r.level for r in levels], COLOURS[name]
        left.plot(x, [r.throughput for r in levels], "o-", color=colour, label=NAMES[name])
        right.plot(x, [r.p50_ms for r in levels], "o-", color=colour, label=f"{NAMES[name]} p50")
        right.plot(x, [r.p99_ms for r in levels], "s--", color=colour, alpha=0.5, label=f"{NAMES[name]} p99")
    floor = report.floor
    left.axhline(
        floor["batch_texts_per_s"],
        color="grey",
        linestyle=":",
        label=f"in-process, batches of {floor['batch_size']} (texts/s)",
    )
    right.axhline(floor["single_p50_ms"], color="grey", linestyle=":", label="in-process p50, one query")
    for axis, title, unit in ((left, "Throughput", "requests/s"), (right, "Latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(report.settings["concurrency"], [str(c) for c in report.settings["concurrency"]])
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_yscale("log")
        axis.set_xlabel("concurrency (closed loop)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
