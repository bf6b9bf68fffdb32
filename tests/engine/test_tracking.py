"""Experiment tracking: offline W&B runs read back from their .wandb record log, resume, disabled mode.

No test reaches the network: W&B runs offline, its state folders live in ``tmp_path``, training
subprocesses run in a fresh network namespace with no interfaces up when ``unshare`` allows it
(Linux as root or with user namespaces), and an audit-hook guard inside them fails the test on any
attempt to connect or resolve a host name, so "offline needs no network" is checked, not assumed.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actionrec import build
from actionrec.config import IMAGENET_MEAN, IMAGENET_STD, load_config
from actionrec.data.transforms import eval_transform
from actionrec.engine.checkpoint import load_checkpoint
from actionrec.engine.tracking import RunLogger, clip_to_uint8, encode_gif

REPO = Path(__file__).resolve().parents[2]


def tiny_overrides(root: Path, out_dir: Path) -> list[str]:
    """tools/train.py in seconds: test_resnet at 32 px, 4-frame clips, batch 4, one epoch, W&B off."""
    return [f"data.root={root}", f"train.output_dir={out_dir}", "data.clip_len=4", "data.resize_short=40",
            "data.crop_size=32", "data.num_workers=0", "model.backbone=test_resnet", "model.hidden_size=16",
            "train.batch_size=4", "train.epochs=1", "train.device=cpu", "eval.batch_size=4",
            "logging.wandb.mode=disabled"]

# ---------------------------------------------------------------------------------------------
# Reading a .wandb file. wandb 0.31 ships no Python reader (the old DataStore is gone; wandb-core
# reads it in Go), so this parses its framing, LevelDB's log format, and decodes each record with
# wandb's own protobuf classes: a 7-byte file header ":W&B" + magic + version, then 32 KiB blocks of
# chunks, each with a 7-byte header (crc32c, little-endian length, type FULL/FIRST/MIDDLE/LAST).

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pos, pending = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            records.append(wandb_internal_pb2.Record.FromString(chunk))
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            records.append(wandb_internal_pb2.Record.FromString(pending + chunk))
    return records


def _of(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history_rows(records: list) -> list[dict]:
    """History rows as {key: value}; nested keys (media) are joined with '/'."""
    return [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in h.item} for h in _of(records, "history")]


# ---------------------------------------------------------------------------------------------


def _netns_prefix() -> list[str]:
    """``unshare -rn`` (a network namespace without interfaces) where the kernel allows it."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-rn"]
    return []


# Python-level guard inside the training process, as an audit hook (so it also sees calls made
# through references taken before it was installed): every non-Unix-socket connect and every name
# lookup is recorded and refused. W&B's client talks to its wandb-core process over a Unix socket.
# It catches attempts that a network namespace would only make fail, such as an update check.
_NET_GUARD = """
import socket
NET_ATTEMPTS, NET_GUARD_ON = [], [True]

def _net_guard(event, args):
    if not NET_GUARD_ON[0]:
        return
    if event == "socket.getaddrinfo" or (event == "socket.connect" and args[0].family != socket.AF_UNIX):
        NET_ATTEMPTS.append(f"{event} {args[1] if event == 'socket.connect' else args[0]!r}")
        raise OSError("network blocked by the test")
"""
# Installed in a subprocess; reported at exit, after wandb's own exit hooks (atexit runs LIFO).
_NET_GUARD_ON = (
    "import atexit, json, sys\n"
    "sys.addaudithook(_net_guard)\n"
    "atexit.register(lambda: print('NET_ATTEMPTS=' + json.dumps(NET_ATTEMPTS), flush=True))\n"
)
_in_process_guard: dict = {}


@pytest.fixture
def net_attempts() -> list:
    """The guard in this process (audit hooks cannot be removed, so it is switched off after)."""
    if not _in_process_guard:
        exec(_NET_GUARD, _in_process_guard)
        sys.addaudithook(_in_process_guard["_net_guard"])
    _in_process_guard["NET_ATTEMPTS"].clear()
    _in_process_guard["NET_GUARD_ON"][0] = True
    yield _in_process_guard["NET_ATTEMPTS"]
    _in_process_guard["NET_GUARD_ON"][0] = False


def _load_train_tool():
    spec = importlib.util.spec_from_file_location("actionrec_tool_train_for_tracking", REPO / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wandb_env(tmp_path: Path, mode: str | None) -> dict:
    """Environment with W&B state folders under tmp_path and WANDB_MODE as given (None: unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    state = tmp_path / "wandb_state"
    if mode is not None:
        env["WANDB_MODE"] = mode
    env.update(
        WANDB_SILENT="true",
        WANDB_DATA_DIR=str(state / "data"),
        WANDB_CACHE_DIR=str(state / "cache"),
        WANDB_CONFIG_DIR=str(state / "config"),
        WANDB_ARTIFACT_DIR=str(state / "artifacts"),
        # Belt and braces where unshare is unavailable: any API call would hit a closed local port.
        WANDB_BASE_URL="http://127.0.0.1:9",
    )
    return env


def _train(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """tools/train.py in a subprocess without network; fails the test on any attempt to use it."""
    script = (
        _NET_GUARD + _NET_GUARD_ON + "import runpy\n"
        f"sys.argv = ['train.py', *{args!r}]\n"
        "runpy.run_path('tools/train.py', run_name='__main__')\n"
    )
    proc = subprocess.run([*_netns_prefix(), sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "NET_ATTEMPTS=[]" in proc.stdout, proc.stdout[-2000:]
    return proc


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_offline_run_records_metrics_config_media_model_and_resumes_same_run(tiny_dataset, tmp_path):
    # WANDB_MODE unset: offline comes from the config alone, the path a user without W&B takes.
    # (wandb 0.31 sent usage telemetry from exactly this path until RunLogger set the global mode.)
    env = _wandb_env(tmp_path, None)
    common = tiny_overrides(tiny_dataset, tmp_path) + [
        "logging.wandb.mode=offline", "logging.wandb.project=actionrec-test", "logging.wandb.tags=[tiny, ci]",
        "logging.wandb.log_videos_every=1", "train.max_steps_per_epoch=2", "train.log_every=1", "train.name=wb"]
    _train(common, env)

    run = tmp_path / "wb"
    ckpt = load_checkpoint(run / "last.pt")
    run_id = ckpt["extra"]["wandb_id"]
    assert run_id
    (first_dir,) = sorted((run / "wandb").glob("offline-run-*"))
    assert first_dir.name.endswith(f"-{run_id}")
    records = read_wandb_records(first_dir / f"run-{run_id}.wandb")

    # The run itself: id, project, name, tags and the resolved config.
    (meta,) = _of(records, "run")
    assert (meta.run_id, meta.project, meta.display_name, list(meta.tags)) == (run_id, "actionrec-test", "wb", ["tiny", "ci"])
    config = {i.key: json.loads(i.value_json) for i in meta.config.update}
    assert config["data"]["clip_len"] == 4 and config["model"]["backbone"] == "test_resnet"
    assert config["logging"]["wandb"]["mode"] == "offline"

    # Per-step training metrics: the same values as the local steps.jsonl, at the same steps.
    rows = history_rows(records)
    by_step = {r["_step"]: r for r in rows}
    local_steps = _read_jsonl(run / "steps.jsonl")
    assert [s["step"] for s in local_steps] == [1, 2]
    for s in local_steps:
        for key in ("train/loss", "train/lr", "train/grad_norm", "train/clips_per_s", "train/data_wait_frac"):
            assert by_step[s["step"]][key] == pytest.approx(s[key], rel=1e-12), key
        assert np.isfinite(by_step[s["step"]]["train/grad_norm"])

    # The epoch row: validation metrics equal to the local metrics.jsonl row.
    (epoch_row,) = _read_jsonl(run / "metrics.jsonl")
    logged = by_step[2]
    for key in ("val_top1", "val_top5", "val_mean_class_acc", "val_loss", "train_loss"):
        assert logged[key] == pytest.approx(epoch_row[key], rel=1e-12), key

    # Confusion matrix plot and per-class table, as table files in the run folder.
    files = first_dir / "files"
    assert logged["val/confusion_matrix_table/_type"] == "table-file"
    cm = json.loads((files / logged["val/confusion_matrix_table/path"]).read_text())
    assert cm["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert sum(r[2] for r in cm["data"]) == 8  # the 8 validation videos
    per_class = json.loads((files / logged["val/per_class_acc/path"]).read_text())
    assert per_class["columns"] == ["class", "accuracy", "videos"]
    assert {r[0] for r in per_class["data"]} <= set(ckpt["class_names"])
    assert sum(r[2] for r in per_class["data"]) == 8
    assert np.mean([r[1] for r in per_class["data"]]) == pytest.approx(epoch_row["val_mean_class_acc"])

    # Four validation clips as GIF videos, captioned with the true and the predicted class.
    assert logged["val/videos/_type"] == "videos" and logged["val/videos/count"] == 4
    classes = "|".join(ckpt["class_names"])
    for caption, video in zip(logged["val/videos/captions"], logged["val/videos/videos"]):
        assert re.fullmatch(rf"true: ({classes}) \| pred: ({classes}) \(\d\.\d\d\)", caption), caption
        gif = Image.open(files / video["path"])
        assert gif.n_frames == 4 and gif.size == (32, 32)  # clip_len frames at crop_size

    # The best checkpoint as a model artifact carrying the config and the class names.
    (model,) = [a for a in _of(records, "artifact") if a.type == "model"]
    assert model.name == f"model-{run_id}"
    assert [c.path for c in model.manifest.contents] == ["best.pt"]
    art_meta = json.loads(model.metadata)
    assert art_meta["class_names"] == ckpt["class_names"] and art_meta["config"]["data"]["clip_len"] == 4
    assert art_meta["epoch"] == 1

    # System metrics, sampled by W&B itself.
    stats = {i.key for s in _of(records, "stats") for i in s.item}
    assert any(k.startswith("memory") or k.startswith("proc.memory") for k in stats), stats

    # --resume auto for a second epoch: a new offline folder with the same run id, continuing the steps.
    _train(common + ["train.epochs=2", "--resume", "auto"], {**env, "WANDB_MODE": "offline"})
    dirs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and all(d.name.endswith(f"-{run_id}") for d in dirs)
    assert load_checkpoint(run / "last.pt")["extra"]["wandb_id"] == run_id
    second = read_wandb_records(dirs[1] / f"run-{run_id}.wandb")
    assert _of(second, "run")[0].run_id == run_id
    steps = {r["_step"]: r for r in history_rows(second)}
    assert min(steps) == 3 and "val_top1" in steps[4]  # nothing re-logged, epoch 2 at step 4
    assert steps[4]["val_top1"] == pytest.approx(_read_jsonl(run / "metrics.jsonl")[1]["val_top1"])
    assert [r["epoch"] for r in _read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_disabled_mode_writes_nothing_wandb_and_needs_no_network(tiny_dataset, tmp_path, monkeypatch, net_attempts):
    # WANDB_MODE=offline in the environment must not override an explicit logging.wandb.mode=disabled.
    for key, value in _wandb_env(tmp_path, "offline").items():
        if key.startswith("WANDB_"):
            monkeypatch.setenv(key, value)
    train = _load_train_tool()
    train.main(train.parse_args(tiny_overrides(tiny_dataset, tmp_path) + [
        "train.max_steps_per_epoch=1", "train.log_every=1", "train.name=plain", "logging.wandb.log_videos_every=1"]))
    assert net_attempts == []
    run = tmp_path / "plain"
    assert (run / "metrics.jsonl").is_file() and (run / "steps.jsonl").is_file() and (run / "metrics.csv").is_file()
    assert load_checkpoint(run / "last.pt")["extra"]["wandb_id"] is None
    assert not [p for p in tmp_path.rglob("*") if "wandb" in p.name.lower()]
    # wandb-core writes its debug log under WANDB_CACHE_DIR when it starts: no folder, it never ran.
    assert not (tmp_path / "wandb_state").exists()


def test_non_main_rank_logger_is_a_no_op(tmp_path):
    logger = RunLogger(tmp_path / "rank1", wandb_kwargs={"mode": "offline", "project": "x"}, enabled=False)
    logger.log_step({"step": 1, "train/loss": 1.0})
    logger.log_epoch({"epoch": 1, "val_top1": 0.5}, step=1)
    logger.log_model(tmp_path / "missing.pt", metadata={})
    assert logger.wandb_run is None and logger.wandb_id is None
    assert logger.eval_media({"labels": np.zeros(2)}, ["a"]) == {}
    assert not (tmp_path / "rank1").exists()


def test_wandb_mode_precedence_and_init_kwargs(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = load_config(None, ["logging.wandb.tags=[a]", "train.name=exp1"])
    kw = build.wandb_kwargs(cfg, tmp_path / "exp1")
    assert kw["mode"] == "offline" and kw["project"] == "actionrec" and kw["name"] == "exp1" and kw["tags"] == ["a"]
    assert kw["entity"] is None and kw["config"]["data"]["clip_len"] == 16 and "id" not in kw
    resumed = build.wandb_kwargs(cfg, tmp_path / "exp1", resume_id="abc123")
    assert (resumed["id"], resumed["resume"]) == ("abc123", "allow")

    monkeypatch.setenv("WANDB_MODE", "online")
    assert build.wandb_kwargs(cfg, tmp_path)["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert build.wandb_kwargs(cfg, tmp_path)["mode"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert build.wandb_kwargs(cfg, tmp_path) is None
    monkeypatch.setenv("WANDB_MODE", "online")
    assert build.wandb_kwargs(load_config(None, ["logging.wandb.mode=disabled"]), tmp_path) is None
    monkeypatch.setenv("WANDB_MODE", "onlien")
    with pytest.raises(ValueError, match="WANDB_MODE"):
        build.wandb_kwargs(cfg, tmp_path)


def test_videos_due_every_n_epochs_and_at_the_end():
    cfg = load_config(None, ["train.epochs=12", "logging.wandb.log_videos_every=5"])
    assert [e for e in range(12) if build.wandb_videos_due(cfg, e)] == [4, 9, 11]
    never = load_config(None, ["logging.wandb.log_videos_every=0"])
    assert not any(build.wandb_videos_due(never, e) for e in range(30))
    with pytest.raises(ValueError, match="logging.wandb.log_videos_every"):
        load_config(None, ["logging.wandb.log_videos_every=-1"])


def test_clip_to_uint8_undoes_the_eval_transform_and_gif_keeps_frames():
    rng = np.random.default_rng(0)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 250]], dtype=np.uint8)
    frames = palette[rng.integers(0, 4, size=(3, 32, 32))]  # (T, H, W, C), 4 colours: exact in a GIF
    clip = eval_transform(resize_short=32, crop_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)(frames)
    assert clip.shape == (3, 3, 32, 32)
    back = clip_to_uint8(clip, IMAGENET_MEAN, IMAGENET_STD)
    assert back.dtype == np.uint8 and back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).max() <= 1

    gif = Image.open(io.BytesIO(encode_gif(back, fps=4)))
    assert gif.n_frames == 3 and gif.info["duration"] == 250
    for t in range(3):
        gif.seek(t)
        assert np.abs(np.asarray(gif.convert("RGB")).astype(int) - back[t].astype(int)).max() <= 1


def test_online_mode_without_api_key_is_a_clear_error(tmp_path):
    # In a subprocess: wandb's process-wide settings (online here) must not leak into other tests.
    env = {**_wandb_env(tmp_path, "online"), "NETRC": str(tmp_path / "no-netrc")}  # no stored key either
    env.pop("WANDB_API_KEY", None)
    script = _NET_GUARD + _NET_GUARD_ON + (
        "from actionrec.engine.tracking import RunLogger\n"
        "try:\n"
        f"    RunLogger({str(tmp_path / 'run')!r}, wandb_kwargs={{'mode': 'online', 'project': 'actionrec-test'}})\n"
        "except ValueError as e:\n"
        "    print('VALUE_ERROR', e)\n"
    )
    proc = subprocess.run([*_netns_prefix(), sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
    assert re.search(r"VALUE_ERROR W&B online mode: .*WANDB_API_KEY.*logging.wandb.mode=offline", proc.stdout), (
        proc.stdout + proc.stderr)[-3000:]
    # Online mode may reach for the server, which the test points at a closed local port.
    attempts = json.loads(proc.stdout.split("NET_ATTEMPTS=")[1])
    assert all("127.0.0.1" in a for a in attempts), attempts
