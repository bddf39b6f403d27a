"""The load report: what one compare run measured, as Markdown and JSON.

Every ratio is ours' advantage, taken within the same run: throughput is ours
divided by theirs, latency theirs divided by ours, so above 1× ours is better.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.load import LevelResult, format_table
from service.core.cpu import CPU_FLAGS

COMMAND = "bash bench/run-loadtest.sh"
NAMES = {"ours": "ours", "naive": "naive", "pytorch": "PyTorch"}
BASELINES = ("naive", "pytorch")
OVERHEAD_TARGET_MS = 0.5


@dataclass
class ServerRun:
    name: str
    cold_start_s: float
    idle_rss_mb: float
    workloads: dict[str, list[LevelResult]]

    @property
    def levels(self) -> list[LevelResult]:
        return [level for levels in self.workloads.values() for level in levels]

    @property
    def peak_rss_mb(self) -> float:
        return max([self.idle_rss_mb] + [r.peak_rss_mb or 0 for r in self.levels])

    def at(self, workload: str, concurrency: int) -> LevelResult | None:
        return next((r for r in self.workloads.get(workload, []) if r.level == concurrency), None)

    def measured(self, workload: str, concurrency: int) -> LevelResult:
        """``at`` for a level the run's plan gave this server (bench/compare.py): it is there."""
        result = self.at(workload, concurrency)
        if result is None:
            raise LookupError(f"{self.name} has no {workload} result at concurrency {concurrency}")
        return result


@dataclass
class Report:
    machine: str
    manifest: dict
    settings: dict
    floor: dict[str, float]
    runs: dict[str, ServerRun]
    # Floors per engine and ours' /info per server, when ours-onnxruntime ran beside ours (bench/compare.py).
    engines: dict = field(default_factory=dict)

    @property
    def baselines(self) -> list[str]:
        return [name for name in BASELINES if name in self.runs]

    @property
    def low(self) -> int:
        """The level the service's overhead is read at: concurrency 1 when measured."""
        return min(self.settings["concurrency"])

    @property
    def headline(self) -> int:
        """The level throughput is judged at: concurrency 32 when measured."""
        levels = self.settings["concurrency"]
        return 32 if 32 in levels else max(levels)


def machine() -> str:
    flags = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in CPU_FLAGS if f in flags]
    return f"{model or 'unknown CPU'}, {os.cpu_count()} cores, flags: {', '.join(shown) or 'none of avx2/avx512/vnni'}"


def advantage(ours: LevelResult, theirs: LevelResult) -> dict[str, float]:
    """Ours' advantage over one baseline at one level: throughput, p50 and p99."""
    return {
        "throughput": round(ours.throughput / theirs.throughput, 2) if theirs.throughput else 0.0,
        "p50": round(theirs.p50_ms / ours.p50_ms, 2),
        "p99": round(theirs.p99_ms / ours.p99_ms, 2),
    }


def figures(report: Report) -> dict:
    """Everything the text states, computed once for the Markdown and the JSON."""
    ours = report.runs["ours"]
    low, high = ours.measured("short", report.low), ours.measured("short", report.headline)
    ratios = {
        name: {
            c: advantage(ours.measured("short", c), report.runs[name].measured("short", c))
            for c in report.settings["concurrency"]
        }
        for name in report.baselines
    }
    overhead = round(low.p50_ms - report.floor["single_p50_ms"], 2)
    # What the service adds: its p50 less the model's in-process time and less the bare round
    # trip of the load tool to a server that answers at once (bench/wire_floor.py).
    added = round(overhead - report.floor["wire_p50_ms"], 2)
    targets = [
        (
            f"service overhead at concurrency {report.low} (ours p50 - in-process p50 - bare round trip) "
            f"≤ {OVERHEAD_TARGET_MS} ms",
            f"{added:+.2f} ms",
            added <= OVERHEAD_TARGET_MS,
        ),
        (
            "no failed request from ours, any level or workload",
            str(sum(r.errors for r in ours.levels)),
            not any(r.errors for r in ours.levels),
        ),
    ]
    if "naive" in ratios:
        for key, wording in (("throughput", "throughput at least"), ("p50", "p50 at most")):
            level = min(ratios["naive"], key=lambda c: ratios["naive"][c][key])
            ratio = ratios["naive"][level][key]
            targets.append(
                (
                    f"{wording} the naive server's at every concurrency",
                    f"lowest advantage {ratio:.2f}× (concurrency {level})",
                    ratio >= 1,
                )
            )
    for name, minimum in (("naive", 1.5), ("pytorch", 10)):
        if name in ratios:
            ratio = ratios[name][report.headline]["throughput"]
            targets.append(
                (
                    f"throughput at concurrency {report.headline} ≥ {minimum:g}× {NAMES[name]}",
                    f"{ratio:.2f}×",
                    ratio >= minimum,
                )
            )
    return {
        "overhead_ms": overhead,
        "added_ms": added,
        "share_of_batched_throughput": round(high.throughput / report.floor["batch_texts_per_s"], 3),
        "ratios": ratios,
        "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets],
    }


def _pair(result: LevelResult | None) -> str:
    return "-" if result is None else f"{result.p50_ms:.1f} / {result.p99_ms:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _main_section(report: Report, numbers: dict) -> list[str]:
    names = ["ours", *report.baselines]
    rows = [
        [str(c)]
        + [f"{report.runs[n].measured('short', c).throughput:.0f}" for n in names]
        + [_pair(report.runs[n].at("short", c)) for n in names]
        for c in report.settings["concurrency"]
    ]
    lines = ["## Short queries, closed loop", ""]
    lines += _table(
        ["concurrency"] + [f"{NAMES[n]} req/s" for n in names] + [f"{NAMES[n]} p50 / p99 ms" for n in names], rows
    )
    if report.baselines:
        lines += [
            "",
            "Ours' advantage, same run (throughput ours ÷ theirs, latency theirs ÷ ours; above 1× ours is better):",
            "",
        ]
        header = ["concurrency"] + [
            f"vs {NAMES[n]}: {key}" for n in report.baselines for key in ("req/s", "p50", "p99")
        ]
        rows = [
            [str(c)]
            + [f"{numbers['ratios'][n][c][key]:.2f}×" for n in report.baselines for key in ("throughput", "p50", "p99")]
            for c in report.settings["concurrency"]
        ]
        lines += _table(header, rows)
    return lines


def _floor_section(report: Report, numbers: dict) -> list[str]:
    floor, ours = report.floor, report.runs["ours"]
    low, high = ours.measured("short", report.low), ours.measured("short", report.headline)
    rows = [
        [
            "p50, one short query (tokenize + session.run)",
            f"{floor['single_p50_ms']:.2f} ms",
            f"ours {low.p50_ms:.2f} ms at concurrency {report.low}",
            f"{numbers['overhead_ms']:+.2f} ms over in-process",
        ],
        [
            "p50, bare round trip (`bench/wire_floor.py` answers at once)",
            "",
            f"{floor['wire_p50_ms']:.2f} ms",
            f"{numbers['added_ms']:+.2f} ms added by the service (target ≤ {OVERHEAD_TARGET_MS} ms)",
        ],
        ["p99, one short query", f"{floor['single_p99_ms']:.2f} ms", f"ours {low.p99_ms:.2f} ms", ""],
        [
            f"throughput, batches of {floor['batch_size']}",
            f"{floor['batch_texts_per_s']:.0f} texts/s",
            f"ours {high.throughput:.0f} req/s at concurrency {report.headline}",
            f"{numbers['share_of_batched_throughput']:.0%} of the in-process batched throughput",
        ],
    ]
    if "naive" in report.runs:
        naive = report.runs["naive"].measured("short", report.low)
        rows.insert(
            1,
            [
                "p50, one short query, naive server (reference)",
                "",
                f"naive {naive.p50_ms:.2f} ms",
                f"{naive.p50_ms - floor['single_p50_ms']:+.2f} ms over in-process",
            ],
        )
    return [
        "",
        "## Against the in-process floor",
        "",
        "Same bundle and texts in one process, no HTTP (`bench/floor.py`, the service's session options). "
        "Over HTTP includes the load tool's client and the loopback round trip, for every server alike; "
        "the bare round trip measures that alone, against a server that answers every request at once.",
        "",
    ] + _table(["figure", "in-process", "over HTTP", "difference"], rows)


def _long_mix_section(report: Report) -> list[str]:
    level = report.settings["mixed_concurrency"]
    runs = [run for run in report.runs.values() if run.at("long-mix", level)]
    if not runs:
        return []
    rows = []
    for run in runs:
        mixed, alone = run.measured("long-mix", level), run.at("short", level)
        rows.append(
            [
                NAMES[run.name],
                f"{mixed.throughput:.0f}",
                _ms(mixed.short_p50_ms),
                _ms(mixed.short_p99_ms),
                f"{mixed.p99_ms:.1f}",
                _ms(None if alone is None else alone.p99_ms),
            ]
        )
    return [
        "",
        f"## Long texts among short queries (concurrency {level})",
        "",
        f"{report.settings['long_fraction']:.0%} of requests are single texts cut at the max length "
        f"({report.manifest['max_length']} tokens), the rest short queries. Short p50/p99 count the short "
        "queries alone; the last column is their p99 with no long texts at the same concurrency.",
        "",
    ] + _table(["server", "req/s", "short p50 ms", "short p99 ms", "all p99 ms", "short p99 ms, short only"], rows)


def _documents_section(report: Report) -> list[str]:
    ours, level = report.runs["ours"], report.settings["mixed_concurrency"]
    mixed, only = ours.at("document-mix", level), ours.at("documents", report.settings.get("document_concurrency", 0))
    alone = ours.at("short", level)
    if mixed is None or only is None or alone is None or mixed.short_p99_ms is None:
        return []
    floor = report.floor.get("windows_per_s")
    mix_row = [
        f"{mixed.throughput:.0f}",
        _ms(mixed.short_p50_ms),
        _ms(mixed.short_p99_ms),
        _ms(alone.p99_ms),
        f"{mixed.short_p99_ms / alone.p99_ms:.2f}×",
        f"{_ms(mixed.document_p50_ms)} / {_ms(mixed.document_p99_ms)}",
        _ms(mixed.windows_per_s),
    ]
    only_row = [
        str(report.settings["document_concurrency"]),
        f"{only.throughput:.2f}",
        _ms(only.windows_per_s),
        _ms(floor),
        "-" if not floor or only.windows_per_s is None else f"{only.windows_per_s / floor:.0%}",
        f"{_ms(only.document_p50_ms)} / {_ms(only.document_p99_ms)}",
    ]
    return (
        [
            "",
            f"## Whole documents read in windows (concurrency {level})",
            "",
            f"{report.settings['document_fraction']:.0%} of requests are documents of 1,000 to 5,000 tokens sent with "
            f"`windows: true` (read in windows of {report.manifest['max_length']} tokens sharing 32), the rest short "
            "queries. Short p50/p99 count the short queries alone; beside them, their p99 with no documents at the "
            "same concurrency, and the ratio of the two (the bound is 2×).",
            "",
        ]
        + _table(
            [
                "req/s",
                "short p50 ms",
                "short p99 ms",
                "short p99 ms, short only",
                "p99 ratio",
                "document p50 / p99 ms",
                "windows/s",
            ],
            [mix_row],
        )
        + [
            "",
            f"Documents only; the in-process floor runs the same documents' windows in batches of "
            f"{report.floor.get('window_batch', '-')} with no server around them (`bench/floor.py`).",
            "",
        ]
        + _table(
            [
                "concurrency",
                "documents/s",
                "windows/s",
                "in-process windows/s",
                "of the floor",
                "document p50 / p99 ms",
            ],
            [only_row],
        )
    )


def _cache_section(report: Report) -> list[str]:
    if "ours-cache" not in report.runs:
        return []
    off, on = report.runs["ours"], report.runs["ours-cache"]
    rows = []
    for c in report.settings["cache_concurrency"]:
        a, b = off.measured("repeat", c), on.measured("repeat", c)
        rows.append(
            [
                str(c),
                f"{a.throughput:.0f}",
                f"{b.throughput:.0f}",
                f"{b.throughput / a.throughput:.2f}×",
                _pair(a),
                _pair(b),
                "-" if b.cache_hit_rate is None else f"{100 * b.cache_hit_rate:.1f}",
            ]
        )
    return [
        "",
        "## Response cache: a repeating workload (labelled, not the main figures)",
        "",
        f"Short queries drawn from {report.settings['distinct']} distinct texts; ours with the cache off "
        f"(default) and with `CACHE_SIZE={report.settings['cache_size']}`, same workload. Every other figure "
        "in this report runs with the cache off.",
        "",
    ] + _table(
        [
            "concurrency",
            "cache off req/s",
            "cache on req/s",
            "ratio",
            "off p50 / p99 ms",
            "on p50 / p99 ms",
            "hit rate %",
        ],
        rows,
    )


def _shadow_section(report: Report) -> list[str]:
    if "ours-shadow" not in report.runs:
        return []
    alone, shadowed = report.runs["ours"], report.runs["ours-shadow"]
    rows = []
    for c in report.settings["shadow_concurrency"]:
        a, b = alone.measured("short", c), shadowed.measured("short", c)
        rows.append(
            [
                str(c),
                f"{a.throughput:.0f}",
                f"{b.throughput:.0f}",
                _pair(a),
                _pair(b),
                f"{b.p99_ms / a.p99_ms:.2f}×",
                "-" if b.shadow_share is None else f"{100 * b.shadow_share:.1f}",
                "-" if b.shadow_skipped_share is None else f"{100 * b.shadow_skipped_share:.1f}",
            ]
        )
    return [
        "",
        "## A shadow version beside the serving one",
        "",
        f"Ours serving a repository whose model has a shadow version (`SHADOW_FRACTION="
        f"{report.settings['shadow_fraction']:g}`, default budget and threads; the shadow is a copy of the same "
        "bundle, so it costs what a retrained candidate of the same architecture would), against ours without "
        "one, same short queries. The last columns: the share of served inputs the shadow ran, and the share "
        "picked for it but skipped because the serving queue was busy or its CPU budget spent.",
        "",
    ] + _table(
        [
            "concurrency",
            "no shadow req/s",
            "shadow req/s",
            "no shadow p50 / p99 ms",
            "shadow p50 / p99 ms",
            "p99 ratio",
            "shadow ran %",
            "skipped %",
        ],
        rows,
    )


def _resources_section(report: Report) -> list[str]:
    ours = report.runs["ours"]

    def cells(value, fmt: str) -> list[str]:
        return [fmt.format(value(ours))] + [
            fmt.format(value(report.runs[n])) + f" ({value(report.runs[n]) / value(ours):.1f}× ours)"
            for n in report.baselines
        ]

    return ["", "## Cold start and memory", ""] + _table(
        [""] + [NAMES[n] for n in ["ours", *report.baselines]],
        [
            ["cold start (process start → /health 200)"] + cells(lambda r: r.cold_start_s, "{:.2f} s"),
            ["idle RSS"] + cells(lambda r: r.idle_rss_mb, "{:.0f} MB"),
            ["peak RSS"] + cells(lambda r: r.peak_rss_mb, "{:.0f} MB"),
        ],
    )


@dataclass(frozen=True)
class EngineFigure:
    """One figure for both engines from the same run; ``target``: issue #29's least advantage, set for a
    CPU with AMX, where there is one."""

    name: str
    onnxruntime: float
    auto: float
    lower_is_better: bool = False
    target: float | None = None

    @property
    def advantage(self) -> float:
        """How many times better auto's figure is: a ratio above 1 favours auto, for either direction."""
        return self.onnxruntime / self.auto if self.lower_is_better else self.auto / self.onnxruntime


def engine_figures(report: Report) -> list[EngineFigure]:
    """ONNX Runtime against the engine auto picked, from the same run."""
    if not report.engines or "ours-onnxruntime" not in report.runs:
        return []
    ort, auto = report.runs["ours-onnxruntime"], report.runs["ours"]
    floors = report.engines["floors"]
    low, high = report.low, report.headline
    batch = floors["auto"]["batch_size"]
    return [
        EngineFigure(
            f"HTTP req/s at concurrency {high}",
            ort.measured("short", high).throughput,
            auto.measured("short", high).throughput,
            target=3.0,
        ),
        EngineFigure(
            f"p50 at concurrency {low} (ONNX Runtime ÷ auto)",
            ort.measured("short", low).p50_ms,
            auto.measured("short", low).p50_ms,
            lower_is_better=True,
            target=1 / 0.75,
        ),
        EngineFigure(
            f"in-process texts/s in batches of {batch}",
            floors["onnxruntime"]["batch_texts_per_s"],
            floors["auto"]["batch_texts_per_s"],
            target=4.0,
        ),
        EngineFigure(
            "in-process p50 ms, one short query (ONNX Runtime ÷ auto)",
            floors["onnxruntime"]["single_p50_ms"],
            floors["auto"]["single_p50_ms"],
            lower_is_better=True,
        ),
        EngineFigure(
            f"HTTP req/s at concurrency {low}",
            ort.measured("short", low).throughput,
            auto.measured("short", low).throughput,
        ),
        EngineFigure(
            f"p50 at concurrency {high} (ONNX Runtime ÷ auto)",
            ort.measured("short", high).p50_ms,
            auto.measured("short", high).p50_ms,
            lower_is_better=True,
        ),
    ]


def _engines_section(report: Report) -> list[str]:
    figures_ = engine_figures(report)
    if not figures_:
        return []
    info = report.engines["info"]
    auto, ort = info["ours"], info["ours-onnxruntime"]

    def fidelity(entry: dict) -> str:
        verdict = entry["reverification"]
        return f"{verdict['agreement']:.2%} / {verdict['max_score_diff']:.4f}" if verdict else "-"

    engine = auto["engine"]
    rows = [[f.name, f"{f.onnxruntime:.2f}", f"{f.auto:.2f}", f"{f.advantage:.2f}×"] for f in figures_]
    rows.append(
        [r"agreement / max \|Δp\| with the original, reference set on this CPU", fidelity(ort), fidelity(auto), ""]
    )
    targets = [
        [f.name, f"≥ {f.target:.2f}×", f"{f.advantage:.2f}×", "met" if f.advantage >= f.target else "**missed**"]
        for f in figures_
        if f.target is not None
    ]
    return (
        [
            "",
            "## Engines",
            "",
            f"ENGINE=auto picked **{engine['engine']} {engine['precision']}** here ({engine['reason']}); beside it, "
            "the same server with ENGINE=onnxruntime, and each engine's in-process floor (`bench/floor.py --engine`), "
            "all in the same rounds.",
            "",
        ]
        + _table(
            ["figure", "ONNX Runtime", f"auto ({engine['engine']} {engine['precision']})", "auto's advantage"], rows
        )
        + [
            "",
            "Targets of the engine work (set for a CPU with AMX; this one has "
            f"{'AMX' if 'amx_bf16' in report.machine else 'no AMX'}):",
            "",
        ]
        + _table(["figure", "target", "measured", ""], targets)
    )


def _targets_section(numbers: dict) -> list[str]:
    rows = [[t["target"], t["measured"], "met" if t["met"] else "**missed**"] for t in numbers["targets"]]
    return ["", "## Targets (issue #8)", ""] + _table(["target", "measured", ""], rows)


def _raw_section(report: Report) -> list[str]:
    lines = ["", "## Per server and workload", ""]
    for run in report.runs.values():
        for workload, levels in run.workloads.items():
            lines += [f"{run.name}, {workload}:", "", "```", format_table(levels), "```", ""]
    return lines[:-1]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(report: Report) -> str:
    manifest, settings = report.manifest, report.settings
    chosen = next(v for v in manifest["verification"]["variants"] if v["variant"] == manifest["variant"])
    numbers = figures(report)
    lines = [
        "# Benchmark report",
        "",
        f"Command: `{settings.get('report_command', COMMAND)}`, {settings['duration']:g} s per level and server, "
        "closed loop, in "
        f"{settings.get('rounds', 1)} rounds: all servers stay up and each level is measured in slices, every "
        "server (and the in-process floor) taking one slice per round in a rotating order, so a drift of the "
        "machine's speed during the run falls on all of them alike.",
        f"Machine: {report.machine}; the load generator shares it. These figures are this machine's: compare "
        "ratios within one run, not absolute numbers across machines.",
        f"Bundle: {manifest['model_id']}, variant {manifest['variant']}; top-1 agreement with the original "
        f"model {chosen['agreement']:.2%} on {manifest['verification']['texts']} validation texts.",
        "Servers: **ours** (`python -m service`, default settings, response cache off); **naive** FastAPI + ONNX "
        "Runtime (`bench/naive_server.py`: same bundle, one `session.run` per request, default session options, "
        "top label only, ONNX Runtime's telemetry off as in ours); **PyTorch**, the original model "
        "(`bench/torch_server.py`).",
        "Every answer but 200 counts as a failed request, 429 included, and fails the run.",
        "",
    ]
    lines += _main_section(report, numbers) + _engines_section(report) + _floor_section(report, numbers)
    lines += _long_mix_section(report)
    lines += _documents_section(report)
    lines += (
        _cache_section(report)
        + _shadow_section(report)
        + _resources_section(report)
        + _targets_section(numbers)
        + _raw_section(report)
    )
    return "\n".join(lines) + "\n"


def to_json(report: Report) -> dict:
    return {
        "command": report.settings.get("report_command", COMMAND),
        "machine": report.machine,
        "bundle": {key: report.manifest[key] for key in ("model_id", "variant", "max_length")},
        "settings": report.settings,
        "floor": report.floor,
        "figures": figures(report),
        "engines": {
            **report.engines,
            "figures": [
                {"figure": f.name, "onnxruntime": f.onnxruntime, "auto": f.auto, "advantage": f.advantage}
                for f in engine_figures(report)
            ],
        },
        "servers": {
            run.name: {
                "cold_start_s": run.cold_start_s,
                "idle_rss_mb": run.idle_rss_mb,
                "peak_rss_mb": run.peak_rss_mb,
                "workloads": {w: [asdict(r) for r in levels] for w, levels in run.workloads.items()},
            }
            for run in report.runs.values()
        },
    }
