"""Fair side-by-side timing on a shared machine, results as rows, and the Markdown table.

Absolute seconds drift when other jobs share the cores, so every figure is a ratio measured in
one run: the variants of a benchmark run in rounds (each round runs every variant once, in a
rotated order), and a variant's ratio to the baseline is the median over rounds of the ratio
*within* each round. A slow spell then slows both sides of a ratio instead of one variant.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import torch


@dataclass
class Row:
    """One measured figure: ``value`` in ``unit`` (higher is better unless the unit says otherwise)."""

    bench: str
    variant: str
    value: float
    unit: str
    ratio: float | None = None  # vs the benchmark's baseline, paired per round
    baseline: str = ""
    runs: int = 1
    spread: tuple[float, float] | None = None  # min and max over runs
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Timed:
    """Per-round rates (amount per second) of each variant, in insertion order."""

    rates: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.rates[name])

    def ratio(self, name: str, baseline: str) -> float:
        return statistics.median(a / b for a, b in zip(self.rates[name], self.rates[baseline]))

    def rows(self, bench: str, unit: str, *, baseline: str | None = None, notes: Mapping[str, str] | None = None) -> list[Row]:
        out = []
        for name, r in self.rates.items():
            ratio = self.ratio(name, baseline) if baseline else None
            out.append(Row(bench, name, self.median(name), unit, ratio, baseline or "", len(r), (min(r), max(r)),
                           (notes or {}).get(name, "")))
        return out


def interleaved(variants: Mapping[str, Callable[[], float | tuple[float, float]]], *, repeats: int, warmup: int = 1) -> Timed:
    """Run each variant ``warmup`` times, then ``repeats`` rounds of all variants in rotating order.

    Args:
        variants: name -> callable doing one unit of work and returning the amount done (clips,
            frames); the rate is amount / wall seconds. A callable that must exclude a set-up phase
            (filling a buffer) returns (amount, seconds) timed by itself.
        repeats: timed rounds.
        warmup: untimed calls per variant first (allocator, oneDNN primitive caches, file cache).

    Returns:
        ``Timed`` with one rate per round per variant.
    """
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    timed = Timed({n: [] for n in names})
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            amount = variants[name]()
            seconds = time.perf_counter() - t0
            if isinstance(amount, tuple):  # (amount, seconds) timed by the variant itself
                amount, seconds = amount
            timed.rates[name].append(amount / max(seconds, 1e-9))
    return timed


def matmul_peak(dtype: torch.dtype, *, n: int, repeats: int = 3) -> float:
    """Achieved GFLOP/s of an (n x n) @ (n x n) matmul in ``dtype``: the practical compute ceiling."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up: oneDNN/MKL kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def cprofile_top(fn: Callable[[], object], *, top: int = 15) -> str:
    """cProfile of one call of ``fn``: the entries with the most own time (Python-level view)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Cores, CPU model, SIMD level, torch and library versions, threads, load at start."""
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "load_avg_1min": round(load, 2),
    }


def _fmt(v: float) -> str:
    if v == 0 or not (abs(v) < 1e5):
        return f"{v:.3g}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def markdown_table(rows: list[Row]) -> str:
    """The rows as a Markdown table (what ``docs/benchmarks.md`` records)."""
    lines = ["| benchmark | variant | value | unit | vs baseline | runs (min-max) | note |", "|---|---|---:|---|---:|---|---|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        spread = f"{r.runs} ({_fmt(r.spread[0])}-{_fmt(r.spread[1])})" if r.spread and r.runs > 1 else str(r.runs)
        lines.append(f"| {r.bench} | {r.variant} | {_fmt(r.value)} | {r.unit} | {ratio} | {spread} | {r.note} |")
    return "\n".join(lines)
