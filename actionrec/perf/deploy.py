"""Deployment benchmarks: tools/demo.py end to end (decode + transform + CNN + head), run as users run it.

``bench_threads``: the demo's automatic thread choice against fixed thread counts, on the machine as
it is and with a busy-loop process added (another program holding a core). ``bench_streaming``:
resnet18-size streaming through torch fp32 (frame at a time and batched) and onnxruntime fp32 and
int8 (``tools/export.py --int8``). Every figure is the demo's own ``processing_fps`` (frames read
/ seconds from the first frame to the last, model loading excluded), in interleaved rounds.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from actionrec.perf.timing import Row, interleaved

REPO = Path(__file__).resolve().parents[2]


def demo_run(args: list[str], *, env: dict | None = None) -> tuple[int, float]:
    """(frames, seconds) of one ``tools/demo.py ... --no-show`` run in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo.json"
        proc = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), *args, "--no-show", "--json", str(out)],
                              capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"demo {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
        res = json.loads(out.read_text())
    return res["frames"], res["frames"] / res["processing_fps"]


@contextlib.contextmanager
def busy_loop():
    """Another program keeping one core busy (a pure-Python busy loop), for the duration."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def bench_threads(video: Path, models: dict[str, list[str]], *, cores: int, repeats: int) -> list[Row]:
    """Demo frames/s with ``--threads 0`` (auto) vs every fixed count 1..cores, idle-as-is and loaded.

    Args:
        models: label -> demo arguments naming the model (``--checkpoint X``, ``--max-frames N``).
    """
    rows = []
    for load in ("as is", "one core kept busy"):
        ctx = busy_loop() if load != "as is" else contextlib.nullcontext()
        with ctx:
            for label, margs in models.items():
                variants = {f"--threads {n}": (lambda n=n: demo_run([str(video), *margs, "--threads", str(n)]))
                            for n in range(1, cores + 1)}
                variants = {"auto (default)": lambda: demo_run([str(video), *margs]), **variants}
                timed = interleaved(variants, repeats=repeats, warmup=0)
                bench = f"threads, {label}, {load}"
                rows += timed.rows(bench, "frames/s", baseline="auto (default)")
                best = max((n for n in variants if n != "auto (default)"), key=timed.median)
                rows.append(Row(bench, "auto / best fixed", timed.ratio("auto (default)", best), "x", runs=repeats,
                                note=f"best fixed: {best}"))
    return rows


def bench_streaming(video: Path, checkpoint: Path, export: Path, *, frames: int, repeats: int) -> list[Row]:
    """Streaming frames/s of one model through torch and onnxruntime, fp32 and int8, frame-at-a-time and batched."""
    common = [str(video), "--max-frames", str(frames)]
    variants = {
        "torch fp32, 1 frame per CNN call": common + ["--checkpoint", str(checkpoint), "--batch", "1"],
        "torch fp32, batched (default for files)": common + ["--checkpoint", str(checkpoint)],
        "onnxruntime fp32, batched": common + ["--onnx", str(export)],
        "onnxruntime int8, 1 frame per CNN call": common + ["--onnx", str(export), "--int8", "--batch", "1"],
        "onnxruntime int8, batched": common + ["--onnx", str(export), "--int8"],
    }
    timed = interleaved({k: (lambda a=a: demo_run(a)) for k, a in variants.items()}, repeats=repeats, warmup=0)
    return timed.rows("streaming end to end", "frames/s", baseline=next(iter(variants)))
