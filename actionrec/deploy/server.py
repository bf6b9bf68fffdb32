"""The HTTP server of ``tools/serve.py``: FastAPI routes, upload handling, live stream, limits.

Routes: ``POST /v1/classify`` (multipart field ``file``: scores, timeline), ``WebSocket
/v1/stream`` (JPEG frames in, current top-k out), ``GET /`` (the browser page), ``GET /healthz``
(counters), ``GET /v1/model``.

A request's path through the server: the upload is streamed into a private temp folder (mkdtemp,
mode 0700) under a name of the server's choosing, counting bytes (413 past the limit, before the
rest is read); a decode worker process turns it into preprocessed frames (``uploads``), killed at
``decode_timeout`` if it hangs; the frames join the ``DynamicBatcher``'s next CNN batch; the head
and the timeline windows join batches of the head (``service.plan_answer``, ``finish_answer``); the temp file is removed
whatever happened. Every error is a JSON ``{"error": one line}`` with a 4xx status (5xx only for
a bug), and the next request is served as usual. Nothing a client sends is used as a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Callable

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from actionrec.deploy.batching import DynamicBatcher
from actionrec.deploy.service import ServedModel, by_length, finish_answer, plan_answer, streaming_classifier
from actionrec.deploy.uploads import WARMUP, DecodeJob, decode_upload, safe_suffix
from actionrec.deploy.workers import WorkerPool

log = logging.getLogger("actionrec.serve")

FIELD = "file"
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers and small fields around the file


@dataclass(frozen=True)
class ServeSettings:
    """Server limits and batching (``tools/serve.py`` options of the same names).

    Attributes:
        max_batch: most frames per CNN call, gathered across requests (1: batching off).
        max_wait_ms: longest a frame waits for others before a partial batch runs.
        max_upload_mb: larger uploads get 413 (counted while streaming; the rest is not read).
        max_seconds: longer videos get 413 (frames / fps; and at most 120 fps worth of frames).
        max_concurrency: classify requests and streams in flight; beyond it 503 with Retry-After.
        decode_workers: decode worker processes.
        decode_timeout: seconds one upload's decode may take before its worker is killed (422).
        max_frame_mb: largest WebSocket message (one JPEG frame).
    """

    max_batch: int = 64
    max_wait_ms: float = 10.0
    max_upload_mb: float = 50.0
    max_seconds: float = 30.0
    max_concurrency: int = 32
    decode_workers: int = 2
    decode_timeout: float = 30.0
    max_frame_mb: float = 4.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def client_name(filename: str | None) -> str:
    """The client's file name for messages: last path component, printable, at most 120 characters."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable())[:120].strip()
    return base or "upload"


def one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0][:500] if lines else "error"


def _upload_boundary(request: Request, max_bytes: int) -> bytes:
    """The multipart boundary; 415 for another content type, 413 when the declared length is too large."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(415, f"send the video as multipart/form-data in the field '{FIELD}' "
                            f"(got Content-Type {ctype.decode('latin-1') or 'none'!r})")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes + _FORM_OVERHEAD:
        raise ApiError(413, f"upload is {int(length) / 2**20:.1f} MB; this server takes at most "
                            f"{max_bytes / 2**20:g} MB (--max-upload-mb)")
    return params[b"boundary"]


def _complete_upload(state: dict) -> tuple[str, str]:
    """(path, client file name) of a finished upload; 400 when no file, a cut-short or an empty one."""
    if state["path"] is None:
        raise ApiError(400, f"no '{FIELD}' field in the form: send the video as multipart field '{FIELD}'")
    if state["file"] is not None:
        raise ApiError(400, "the upload ended in the middle of the file (body cut short)")
    if state["bytes"] == 0:
        raise ApiError(400, f"{state['name']}: empty upload (0 bytes)")
    return state["path"], state["name"]


def _discard_upload(state: dict) -> None:
    """Close and delete a partly written upload."""
    if state["file"] is not None:
        state["file"].close()
    if state["path"] is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state["path"])


async def receive_upload(request: Request, folder: str, max_bytes: int) -> tuple[str, str]:
    """Stream the multipart field ``file`` into a new file in ``folder``.

    Returns:
        (path written, the client's file name).

    Raises:
        ApiError: 415 not multipart, 413 too large, 400 malformed, no ``file`` field, or empty.
    """
    boundary = _upload_boundary(request, max_bytes)
    state = {"headers": {}, "field": "", "value": b"", "name": None, "file": None, "path": None, "bytes": 0,
             "files": 0, "other": 0, "error": None, "current": "other"}

    def on_header_field(data, start, end):
        state["field"] += data[start:end].decode("latin-1")

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = "", b""

    def on_headers_finished():
        _, disp = parse_options_header(state["headers"].get("content-disposition", b""))
        is_file = disp.get(b"name") == FIELD.encode()
        state["current"] = "file" if is_file and state["files"] == 0 else "other"
        if is_file:
            state["files"] += 1
            if state["files"] > 1:
                state["error"] = ApiError(400, f"more than one '{FIELD}' field: send one video per request")
                return
            state["name"] = client_name(disp.get(b"filename", b"").decode("utf-8", "replace"))
            fd, path = tempfile.mkstemp(dir=folder, suffix=safe_suffix(state["name"]))
            state["file"], state["path"] = os.fdopen(fd, "wb"), path
        state["headers"] = {}

    def on_part_data(data, start, end):
        n = end - start
        if state["current"] == "file" and state["file"] is not None:
            state["bytes"] += n
            if state["bytes"] > max_bytes:
                state["error"] = state["error"] or ApiError(
                    413, f"upload is larger than {max_bytes / 2**20:g} MB (--max-upload-mb)")
                return
            state["file"].write(data[start:end])
        else:
            state["other"] += n
            if state["other"] > _FORM_OVERHEAD:
                state["error"] = state["error"] or ApiError(413, "form fields besides the video are too large")

    def on_part_end():
        if state["current"] == "file" and state["file"] is not None:
            state["file"].close()
            state["file"] = None

    parser = MultipartParser(boundary, callbacks={
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        try:
            async for chunk in request.stream():
                try:
                    parser.write(chunk)
                except Exception as e:  # python-multipart's MultipartParseError and friends
                    raise ApiError(400, f"malformed multipart body: {one_line(e)}") from None
                if state["error"] is not None:
                    raise state["error"]
        except ClientDisconnect:
            raise ApiError(400, "the client went away during the upload") from None
        try:
            parser.finalize()
        except Exception as e:  # noqa: BLE001 - a body cut short
            raise ApiError(400, f"malformed multipart body: {one_line(e)}") from None
        return _complete_upload(state)
    except BaseException:
        _discard_upload(state)
        raise


def _int_option(name: str, value: int | None, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if not low <= value <= high:
        raise ApiError(422, f"{name} must be between {low} and {high}, got {value}")
    return value


class _State:
    def __init__(self, model: ServedModel, settings: ServeSettings):
        self.model, self.settings = model, settings
        self.in_flight = 0
        self.counts = {"classified": 0, "rejected": 0, "busy": 0, "failed": 0, "stream_frames": 0,
                       "stream_dropped": 0, "streams": 0}
        self.started = time.time()
        self.tmp_dir: str = ""
        self.batcher: DynamicBatcher | None = None
        self.pool: WorkerPool | None = None

    @contextlib.contextmanager
    def slot(self):
        """One of ``max_concurrency`` places, or ApiError 503."""
        if self.in_flight >= self.settings.max_concurrency:
            self.counts["busy"] += 1
            raise ApiError(503, f"server busy: {self.in_flight} requests in flight (--max-concurrency "
                                f"{self.settings.max_concurrency}); retry later", {"Retry-After": "1"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


def _page() -> str:
    return resources.files("actionrec.deploy").joinpath("page.html").read_text(encoding="utf-8")


def create_app(model: ServedModel, settings: ServeSettings, *, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI app; its lifespan starts and stops the decode workers, the batcher and the temp folder."""
    state = _State(model, settings)
    page = _page()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.tmp_dir = tempfile.mkdtemp(prefix="actionrec-serve-")  # mode 0700: private to this user
        state.batcher = DynamicBatcher(functools.partial(_run_model, model.backend), max_batch=settings.max_batch,
                                       max_wait_ms=settings.max_wait_ms, name="model-batcher")
        state.pool = WorkerPool(functools.partial(decode_upload, model.spec), workers=settings.decode_workers,
                                timeout=settings.decode_timeout, warmup=WARMUP)
        try:
            await asyncio.to_thread(state.pool.wait_ready)
            if on_ready is not None:
                on_ready()
            yield
        finally:
            state.pool.close()
            state.batcher.close()
            shutil.rmtree(state.tmp_dir, ignore_errors=True)

    app = FastAPI(title="actionrec", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    _add_error_handlers(app, state)
    _add_http_routes(app, state, model, settings, page)
    _add_stream_route(app, state, model, settings)
    return app


def _add_error_handlers(app: FastAPI, state: _State) -> None:
    """Errors as one-line JSON: API errors with their status, validation errors 422, anything else 500."""
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        if exc.status != 503:
            state.counts["rejected"] += 1
        log.info("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        state.counts["rejected"] += 1
        return JSONResponse({"error": one_line(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        state.counts["rejected"] += 1
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"{where}: {err.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        state.counts["failed"] += 1
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {one_line(exc)}"}, status_code=500)


def _add_http_routes(app: FastAPI, state: _State, model: ServedModel, settings: ServeSettings, page: str) -> None:
    """The page, health and model info, and POST /v1/classify (an uploaded video, batched)."""
    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": model.kind, "uptime_s": round(time.time() - state.started, 1),
                "in_flight": state.in_flight, "requests": dict(state.counts),
                "batching": state.batcher.snapshot(),
                "decode": {"workers": settings.decode_workers, **state.pool.stats,
                           "seconds": round(state.pool.stats["seconds"], 3)}}

    @app.get("/v1/model")
    async def model_info():
        return {"classes": model.class_names, "num_classes": len(model.class_names), "clip_len": model.clip_len,
                "kind": model.kind, "source": os.path.basename(model.source), **model.info,
                "defaults": model.defaults, "limits": asdict(settings)}

    @app.post("/v1/classify")
    async def classify(request: Request, topk: int | None = None, stride: int | None = None,
                       num_clips: int | None = None):
        d, k = model.defaults, len(model.class_names)
        opts = {"topk": _int_option("topk", topk, min(d["topk"], k), 1, k),
                "stride": _int_option("stride", stride, d["stride"], 1, 10_000),
                "num_clips": _int_option("num_clips", num_clips, d["num_clips"], 1, 64)}
        with state.slot():
            path, name = await receive_upload(request, state.tmp_dir, int(settings.max_upload_mb * 2**20))
            try:
                answer = await _classify_file(path, name, opts)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        state.counts["classified"] += 1
        return {"video": name, **answer}

    async def _classify_file(path: str, name: str, opts: dict) -> dict:
        d = model.defaults
        job = DecodeJob(path=path, num_clips=opts["num_clips"], num_crops=d["num_crops"], frame_step=d["frame_step"],
                        max_seconds=settings.max_seconds, max_frames=int(settings.max_seconds * 120))
        res = await asyncio.wrap_future(state.pool.submit(job))
        if res.error:
            if res.error.startswith("timed out"):
                raise ApiError(422, f"{name}: decoding did not finish within {settings.decode_timeout:g} s "
                                    "(--decode-timeout); the decoder was stopped")
            if res.error.startswith("worker"):
                raise ApiError(422, f"{name}: the decoder crashed on this file ({res.error})")
            raise ApiError(422, f"{name}: cannot decode: {one_line(res.error.replace(path, name))}")
        decoded = res.value
        if "error" in decoded:
            raise ApiError(decoded["status"], one_line(decoded["error"].replace("{name}", name)))
        since = time.monotonic()  # one wait budget for the CNN and the head stage
        feats = await asyncio.wrap_future(state.batcher.submit(decoded.pop("rows"), "cnn", since=since))
        plan = plan_answer(model, feats, decoded, topk=opts["topk"], stride=opts["stride"], smooth=d["smooth"],
                           frame_step=d["frame_step"])
        logits = await _heads(plan.seqs, since)
        return finish_answer(model, plan, logits, decoded)

    async def _heads(seqs: list[np.ndarray], since: float) -> list[np.ndarray]:
        """Logits of every (n, D) sequence, batched with other requests' sequences of the same length."""
        groups = by_length(seqs)
        futs = {n: state.batcher.submit(np.stack([seqs[i] for i in idx]), ("head", n), since=since)
                for n, idx in groups.items()}
        out: list = [None] * len(seqs)
        for n, idx in groups.items():
            for i, row in zip(idx, await asyncio.wrap_future(futs[n])):
                out[i] = row
        return out


def _add_stream_route(app: FastAPI, state: _State, model: ServedModel, settings: ServeSettings) -> None:
    """The WebSocket /v1/stream: frames in, predictions out, bounded drops when the client is faster."""
    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket, topk: int | None = None):
        await ws.accept()
        try:
            k = _int_option("topk", topk, min(model.defaults["topk"], len(model.class_names)), 1, len(model.class_names))
            with state.slot():
                state.counts["streams"] += 1
                await _stream(ws, k)
        except ApiError as e:
            await ws.send_json({"error": e.message})
            await ws.close(code=1013 if e.status == 503 else 1008)
        except WebSocketDisconnect:
            pass

    async def _stream(ws: WebSocket, k: int) -> None:
        d = model.defaults
        clf = streaming_classifier(model, stride=d["stride"], smooth=d["smooth"], topk=k, frame_step=d["frame_step"])
        box = {"frame": None, "seq": -1, "dropped": 0, "closed": False, "t0": time.monotonic()}
        ready = asyncio.Event()
        max_bytes = int(settings.max_frame_mb * 2**20)

        async def receive():
            # Only the newest frame is kept: when inference is slower than the camera, older frames
            # are dropped (and counted), never queued, so the label stays current.
            try:
                while True:
                    msg = await ws.receive()
                    if msg["type"] == "websocket.disconnect":
                        break
                    data = msg.get("bytes")
                    if data is None:
                        continue  # text messages carry nothing for us
                    box["seq"] += 1
                    if box["frame"] is not None:
                        box["dropped"] += 1
                        state.counts["stream_dropped"] += 1
                    box["frame"] = (box["seq"], data if len(data) <= max_bytes else None)
                    ready.set()
            finally:
                box["closed"] = True
                ready.set()

        reader = asyncio.create_task(receive())
        last: list[dict] = []
        try:
            while True:
                await ready.wait()
                ready.clear()
                if box["closed"]:
                    return
                if box["frame"] is None:
                    continue
                (seq, data), box["frame"] = box["frame"], None
                t0 = time.monotonic()
                if not clf.wants(seq):
                    continue
                x = await asyncio.to_thread(_decode_frame, data, model.backend.preprocess)
                if isinstance(x, str):
                    await ws.send_json({"frame": seq, "error": x, "dropped": box["dropped"]})
                    continue
                feat = await asyncio.wrap_future(state.batcher.submit(x[None], "cnn"))
                pred = await asyncio.wrap_future(state.batcher.call(clf.push, feat[0], seq))
                if pred is not None:
                    last = [{"label": n, "score": round(p, 6)} for n, p in pred.topk]
                state.counts["stream_frames"] += 1
                await ws.send_json({"frame": seq, "t": round(time.monotonic() - box["t0"], 3), "top": last,
                                    "dropped": box["dropped"], "window": min(clf.num_sampled, model.clip_len),
                                    "ms": round(1000 * (time.monotonic() - t0), 1)})
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await reader


def _run_model(backend, key, x: np.ndarray) -> np.ndarray:
    """The batcher's function: 'cnn' rows are frames, ('head', T) rows are (T, D) feature sequences."""
    return backend.features_batch(x) if key == "cnn" else backend.head_batch(x)


def _decode_frame(data: bytes | None, preprocess) -> np.ndarray | str:
    """A JPEG/PNG message -> preprocessed (3, S, S) float32 frame, or an error message."""
    import cv2

    if data is None:
        return "frame too large (--max-frame-mb)"
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # OPENCV_IO_MAX_IMAGE_PIXELS (tools/serve.py sets 2^25) and friends
        return "image too large (more than 2^25 pixels)"
    if img is None:
        return "not a JPEG or PNG image"
    return np.asarray(preprocess(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)), np.float32)

