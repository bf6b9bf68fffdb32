"""``tools/benchmark.py serve``: requests/s and latency of ``tools/serve.py`` under concurrent clients.

Two servers run at once on 127.0.0.1, one with dynamic batching (``--max-batch``, default
settings) and one with batching off (``--max-batch 1``: one frame per CNN call, as the streaming
demo runs). For each client count, rounds alternate between them, so a slow spell of the shared
machine slows both. Clients are threads, each with its own keep-alive connection, sending the
same multipart upload back to back; latency is per request (send to full answer).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from actionrec.perf.timing import Row

REPO = Path(__file__).resolve().parents[2]
_SERVING = re.compile(r"serving .* on (http://\S+)")


class ServerProcess:
    """``tools/serve.py MODEL --port 0 ARGS`` as a subprocess; ``url`` once it is ready.

    Output goes to ``log_path`` (not a pipe: a pipe nobody reads would fill and stall the server).
    """

    def __init__(self, model: str | Path, args: list[str], log_path: str | Path, *, env: dict | None = None,
                 timeout: float = 180.0):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, str(REPO / "tools" / "serve.py"), str(model), "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.url = self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.log_path.read_text(errors="replace")
            m = _SERVING.search(text)
            if m:
                return m.group(1).rstrip("/")
            if self.proc.poll() is not None:
                raise RuntimeError(f"tools/serve.py exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tools/serve.py not ready after {timeout:g} s:\n{self.log_path.read_text()[-3000:]}")

    def get_json(self, path: str) -> dict:
        u = urlsplit(self.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL after ``timeout``.

        Returns:
            0 after a graceful shutdown (uvicorn re-raises the signal once it has shut down, so the
            process itself ends by SIGTERM), else the exit status.
        """
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        graceful = "Application shutdown complete" in self.log_path.read_text(errors="replace")
        return 0 if graceful and self.proc.returncode in (0, -15) else self.proc.returncode


def multipart(path: str | Path, field: str = "file") -> tuple[bytes, str]:
    """(body, content type) of a form with one file field, as a browser sends it."""
    boundary = uuid.uuid4().hex
    data = Path(path).read_bytes()
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{Path(path).name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def load(url: str, bodies: list[tuple[bytes, str]], *, clients: int, requests: int, path: str = "/v1/classify") -> dict:
    """``clients`` threads, each sending ``requests`` uploads back to back (cycling ``bodies``).

    Returns:
        ``{"seconds", "latencies" (s), "statuses" {code: count}, "errors" [first few]}``.
    """
    u = urlsplit(url)
    lat, statuses, errors, lock = [], {}, [], threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
        barrier.wait()
        for r in range(requests):
            body, ctype = bodies[(i + r) % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except (OSError, http.client.HTTPException) as e:
                code = -1
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
            dt = time.perf_counter() - t0
            with lock:
                statuses[code] = statuses.get(code, 0) + 1
                if code == 200:
                    lat.append(dt)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return {"seconds": time.perf_counter() - t0, "latencies": lat, "statuses": statuses, "errors": errors[:5]}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between order statistics."""
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q / 100.0
    lo, hi = int(pos), min(int(pos) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def bench_serve(model: str | Path, videos: list[Path], *, work: Path, levels=(1, 4, 16), requests: int = 6,
                repeats: int = 2, server_args: list[str] | None = None, threads: int = 0) -> tuple[list[Row], dict]:
    """Requests/s and p50/p95 latency with batching on and off, at each client count.

    Args:
        model: checkpoint or export folder to serve.
        videos: uploads, cycled over the requests.
        work: folder for the server logs.
        levels: concurrent clients.
        requests: requests per client per round.
        repeats: rounds per level (each round runs both servers, in alternating order).
        server_args: extra ``tools/serve.py`` options for both servers.
        threads: ``--threads`` of both servers (0: torch's default).

    Returns:
        (rows, details: per-variant counters from /healthz after the runs, raw rounds).
    """
    common = [*(server_args or []), "--threads", str(threads)] if threads else list(server_args or [])
    variants = {"batching on": [], "batching off (--max-batch 1)": ["--max-batch", "1"]}
    bodies = [multipart(v) for v in videos]
    servers = {}
    try:
        for name, extra in variants.items():
            servers[name] = ServerProcess(model, common + extra, work / f"serve_{len(servers)}.log")
        for s in servers.values():  # warm-up: oneDNN primitives, decode workers' first files
            load(s.url, bodies, clients=2, requests=2)
        rounds: dict[tuple[str, int], list[dict]] = {}
        for c in levels:
            names = list(servers)
            for r in range(repeats):
                for name in (names if r % 2 == 0 else names[::-1]):
                    res = load(servers[name].url, bodies, clients=c, requests=requests)
                    if res["errors"] or set(res["statuses"]) != {200}:
                        raise RuntimeError(f"{name}, {c} clients: {res['statuses']} {res['errors']}")
                    rounds.setdefault((name, c), []).append(res)
        details = {name: s.get_json("/healthz") for name, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
    rows = []
    off = "batching off (--max-batch 1)"
    for c in levels:
        for name in variants:
            rs = rounds[(name, c)]
            rps = [len(r["latencies"]) / r["seconds"] for r in rs]
            lat = [x for r in rs for x in r["latencies"]]
            ratio = statistics.median(a / b for a, b in zip(rps, [len(r["latencies"]) / r["seconds"]
                                                                   for r in rounds[(off, c)]]))
            rows.append(Row("serve", f"{name}, {c} clients", statistics.median(rps), "requests/s",
                            ratio if name != off else None, off if name != off else "", len(rps), (min(rps), max(rps)),
                            f"p50 {1000 * percentile(lat, 50):.0f} ms, p95 {1000 * percentile(lat, 95):.0f} ms, "
                            f"{len(lat)} requests"))
    return rows, {"healthz": details, "rounds": {f"{n} x{c}": [{k: r[k] for k in ("seconds", "statuses")} |
                                                              {"latencies": [round(x, 4) for x in r["latencies"]]}
                                                              for r in rs] for (n, c), rs in rounds.items()}}


def machine_text() -> str:
    """``lscpu``'s model name and core count (what docs/benchmarks.md records)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return f"{os.cpu_count()} CPUs"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    get = lambda k: fields.get(k, "?").strip()  # noqa: E731
    return f"{get('Model name')}, {get('CPU(s)')} CPUs ({get('Core(s) per socket')} cores/socket, {get('Socket(s)')} socket)"


def time_per_request(health: dict) -> dict:
    """Where a server's time went, per answered request, from its /healthz counters (ms)."""
    n = max(1, health["requests"]["classified"])
    b = health["batching"]
    out = {kind: round(1000 * b[kind]["seconds"] / n, 1) for kind in ("cnn", "head") if kind in b}
    out["decode (worker processes)"] = round(1000 * health["decode"]["seconds"] / max(1, health["decode"]["jobs"]), 1)
    for kind in ("cnn", "head"):
        if kind in b:
            out[f"{kind} mean batch"] = b[kind]["mean_batch"]
    return out


def quickstart_model(work: Path) -> Path:
    """A random-weight checkpoint of configs/quickstart.yaml (timm test_resnet at 48 px, T=8) and its 8 classes."""
    import torch

    from actionrec import build
    from actionrec.config import config_to_dict, load_config
    from actionrec.data.synthetic import SYNTHETIC_CLASSES
    from actionrec.engine.checkpoint import make_checkpoint

    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["logging.wandb.mode=disabled"])
    names = list(SYNTHETIC_CLASSES)
    ckpt = make_checkpoint(model=build.model_from(cfg, len(names)), optimizer=None, scheduler=None, scaler=None,
                           epoch=0, step=0, config=config_to_dict(cfg), class_names=names)
    path = work / "quickstart_model.pt"
    torch.save(ckpt, path)
    return path


def run_serve_benchmark(work: Path, *, quick: bool, repeats: int, threads: int,
                        levels: tuple[int, ...] = (1, 4, 16)) -> tuple[list[Row], str]:
    """``tools/benchmark.py serve``: the quickstart model served with batching on and off.

    Uploads are quickstart-like videos: synthetic 160x120 XVID .avi of 36 frames (the quickstart
    dataset's size and codec, 6-64 frames per video).
    """
    from actionrec.perf.benches import make_videos

    videos = make_videos(work / "serve_videos", count=2 if quick else 4, width=160, height=120,
                         num_frames=36, h264=False)["xvid.avi"]
    rows, details = bench_serve(quickstart_model(work), videos, work=work, levels=(1, 2) if quick else levels,
                                requests=2 if quick else 8, repeats=repeats, threads=threads)
    for name, health in details["healthz"].items():
        split = time_per_request(health)
        rows.append(Row("serve", f"{name}: time per request", sum(v for k, v in split.items() if "batch" not in k),
                        "ms (CNN + head + decode)", note=", ".join(f"{k} {v}" for k, v in split.items())))
    # What the profile section prints: the machine and each server's counters after the runs.
    summary = {"machine": machine_text(), **{name: {"batching": h["batching"], "decode": h["decode"],
                                                   "requests": h["requests"]} for name, h in details["healthz"].items()}}
    return rows, json.dumps(summary, indent=1)
