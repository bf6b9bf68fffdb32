#!/usr/bin/env python
"""Serve a model over HTTP: video uploads, live camera frames, a browser page.

    python tools/serve.py runs/quickstart/best.pt                      # http://127.0.0.1:8000/
    python tools/serve.py runs/quickstart/export                       # ONNX export: onnxruntime, no torch
    python tools/serve.py runs/ucf101/best.pt --host 0.0.0.0 --port 8080 --max-batch 32

POST /v1/classify (multipart field 'file'): whole-video scores (tools/eval.py's multi-clip testing)
and a timeline (tools/demo.py's streaming classifier). WebSocket /v1/stream: JPEG frames in, the
current top-k out, dropping frames when inference is slower than the camera. GET / is a page to
upload a video or use the camera; GET /healthz and GET /v1/model report counters and the model.
CNN work of concurrent requests is batched (--max-batch frames, waiting at most --max-wait-ms).
Needs the 'serve' extra: pip install -e ".[serve]".
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
from pathlib import Path
from actionrec.errors import UsageError

# OpenCV's default cap on a decoded image is 2^30 pixels (3 GB); a camera frame never needs more than this.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 25))

log = logging.getLogger("actionrec.serve")


def parse_args(argv=None) -> argparse.Namespace:
    from actionrec.deploy.server import ServeSettings as S

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="checkpoint (tools/train.py) or export folder (tools/export.py)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; anything else warns)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free port)")
    p.add_argument("--device", default="cpu", help="torch device for a checkpoint (cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for inference (0: auto, the cores that other programs and the decode workers "
                        "leave free, at least 1; README 'CPU threads')")
    p.add_argument("--int8", action="store_true",
                   help="int8 model: an export folder's static int8 backbone and int8 head (tools/export.py --int8); "
                        "a checkpoint's head quantised dynamically")
    p.add_argument("--max-batch", type=int, default=S.max_batch,
                   help="most frames per CNN call, gathered across requests; 1 turns batching off (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=S.max_wait_ms,
                   help="longest a frame waits for others before a partial batch runs (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=S.max_upload_mb, help="largest upload (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=S.max_seconds, help="longest video (default: %(default)s)")
    p.add_argument("--max-concurrency", type=int, default=S.max_concurrency,
                   help="requests and streams in flight; beyond it 503 with Retry-After (default: %(default)s)")
    p.add_argument("--decode-workers", type=int, default=S.decode_workers,
                   help="decode worker processes (default: %(default)s)")
    p.add_argument("--decode-timeout", type=float, default=S.decode_timeout,
                   help="seconds one upload's decode may take; the worker is then killed (default: %(default)s)")
    p.add_argument("--max-frame-mb", type=float, default=S.max_frame_mb,
                   help="largest camera frame message (default: %(default)s)")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace):
    from actionrec.deploy.server import ServeSettings

    s = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_upload_mb=args.max_upload_mb,
                      max_seconds=args.max_seconds, max_concurrency=args.max_concurrency,
                      decode_workers=args.decode_workers, decode_timeout=args.decode_timeout,
                      max_frame_mb=args.max_frame_mb)
    for name in ("max_batch", "max_concurrency", "decode_workers"):
        if getattr(s, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    for name in ("max_wait_ms", "max_upload_mb", "max_seconds", "decode_timeout", "max_frame_mb"):
        if getattr(s, name) < 0 or (name != "max_wait_ms" and getattr(s, name) == 0):
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(s, name)}")
    return s


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a taken port fails at once, and --port 0 works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def main(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from actionrec.deploy.server import create_app
    except ImportError as e:
        raise UsageError(f"tools/serve.py needs the 'serve' extra ({e}): pip install -e \".[serve]\"") from None
    from actionrec.deploy.service import load_served_model
    from actionrec.engine.threads import cpu_threads

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(args)
    if not is_loopback(args.host):
        log.warning("listening on %s: reachable from other machines, with no authentication and no TLS; "
                    "use the default 127.0.0.1 unless that is what you want", args.host)
    sock = bind(args.host, args.port)
    threads = cpu_threads(args.threads, num_workers=settings.decode_workers)
    model = load_served_model(args.model, device=args.device, threads=threads, int8=args.int8)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def ready() -> None:
        print(f"serving {model.kind} {model.source} ({len(model.class_names)} classes) on {url}", flush=True)

    log.info("model %s (%s): %d classes, clip_len %d | max_batch %d, max_wait_ms %g, %d decode workers, "
             "%d inference threads", model.source, model.kind, len(model.class_names), model.clip_len,
             settings.max_batch, settings.max_wait_ms, settings.decode_workers, threads)
    app = create_app(model, settings, on_ready=ready)
    config = uvicorn.Config(app, log_level="info", access_log=args.access_log, ws_max_size=int(settings.max_frame_mb * 2**20) + 1024,
                            timeout_graceful_shutdown=10, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def cli(argv=None) -> None:
    from actionrec.cli import run_tool  # imports no torch: the ONNX path can use it too
    from actionrec.deploy.backends import ModelFileError

    run_tool(parse_args, main, argv, extra=(ValueError, ModelFileError))  # ValueError: the tool's own checks


if __name__ == "__main__":
    cli()
