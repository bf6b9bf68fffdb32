"""tools/explain.py on a model trained here: where the evidence is in time (attention on the event
frames), the PNGs and the JSON it writes, one-line errors, and the pictures in an offline W&B run."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from actionrec import build
from actionrec.data.video_io import read_frames
from tests.deploy.explain_helpers import (event_clip, model_config, normalise, save_checkpoint, train_briefly,
                                          write_video)
from tests.tools.deploy_helpers import (REPO, count_frames, deploy_dataset, load_tool,  # noqa: F401
                                        write_tiny_checkpoint)

CLASSES = ["RedFlash", "BlueFlash"]
# 8-frame clips of 16x16 frames; the head runs every 2 frames in the timeline, no smoothing.
EVENT_MODEL = ["data.clip_len=8", "data.resize_short=16", "data.crop_size=16", "model.backbone=test_resnet",
               "model.hidden_size=16", "model.pooling=attention", "demo.stride=2", "demo.smooth=1", "demo.topk=2"]
SAMPLED = [1, 4, 7, 10, 13, 16, 19, 22]  # eval sampling of a 24-frame video: the 8 segment centres
EVENT = range(9, 15)  # the event's source frames: sampled positions 3 and 4 (frames 10 and 13)


pytestmark = pytest.mark.usefixtures("two_torch_threads")  # tests/conftest.py


@pytest.fixture(scope="module")
def tool():
    return load_tool("explain")


@pytest.fixture(scope="module")
def event_ckpt(tmp_path_factory):
    """test_resnet + BiLSTM + attention, trained on clips whose colour flash (the class) is in frames 3-4 only."""
    tmp = tmp_path_factory.mktemp("event")
    rng = np.random.default_rng(0)
    clips = np.concatenate([event_clip(rng, i % 2) for i in range(64)])
    clips = read_frames(write_video(tmp / "train.mp4", clips), range(len(clips))).reshape(64, 8, 16, 16, 3)
    cfg = model_config(EVENT_MODEL)
    torch.manual_seed(0)
    model = build.model_from(cfg, len(CLASSES))
    train_briefly(model, torch.stack([normalise(c) for c in clips]), torch.tensor([i % 2 for i in range(64)]),
                  steps=30, lr=1e-2)
    return save_checkpoint(model, cfg, CLASSES, tmp / "best.pt")


@pytest.fixture(scope="module")
def event_video(tmp_path_factory):
    """24 frames; a red flash in frames 9-14 only."""
    frames = event_clip(np.random.default_rng(7), 0, frames=24, event=tuple(EVENT))
    return write_video(tmp_path_factory.mktemp("video") / "red_flash.mp4", frames)


def _png(path) -> np.ndarray:
    img = cv2.imread(str(path))
    assert img is not None, f"{path} does not decode"
    assert img.std() > 20, f"{path} looks blank"  # a white figure with only text would be ~10
    return img


def test_attention_is_on_the_event_frames_and_pictures_are_written(tool, event_ckpt, event_video, tmp_path):
    res = tool.cli([str(event_ckpt), str(event_video), "--out", str(tmp_path), "--json"])
    assert json.loads((tmp_path / "explain.json").read_text()) == json.loads(json.dumps(res))
    clip = res["clip"]
    assert clip["frame_indices"] == SAMPLED and clip["predicted"] == clip["class"] == "RedFlash"
    att = np.array(clip["attention"])
    assert att.shape == (8,) and att.sum() == pytest.approx(1.0, abs=1e-4) and (att >= 0).all()
    # The colour is visible only in frames 10 and 13; every LSTM state carries it, but attention
    # learnt to read it where it is seen: most of the weight, and the peak, on those two frames.
    assert att[3:5].sum() > 0.5 and int(att.argmax()) in (3, 4), att
    assert np.array(clip["cams"]).shape == (8, 1, 1)  # 16 px input: a 1x1 map per frame
    assert sum(clip["probs"].values()) == pytest.approx(1.0, abs=1e-4)

    tl = res["timeline"]
    assert tl["num_frames"] == count_frames(event_video)[0] == 24 == len(tl["top_per_frame"])
    assert [p["frame"] for p in tl["predictions"]] == list(range(1, 24, 2))  # head every 2nd frame
    assert tl["top_per_frame"][0] is None and None not in tl["top_per_frame"][1:]  # warm-up, then a label
    bands = tl["bands"]
    assert bands[0]["start"] == 1 and bands[-1]["end"] == 24
    assert all(a["end"] == b["start"] for a, b in zip(bands, bands[1:]))  # contiguous, every frame covered
    assert "RedFlash" in {b["label"] for b in bands}

    grid, timeline = _png(tmp_path / "gradcam.png"), _png(tmp_path / "timeline.png")
    assert grid.shape[1] > 8 * 60 and timeline.shape[1] > 800  # 8 frame columns; a wide time axis


def test_explaining_another_class_and_no_attention_without_attention_pooling(tool, event_ckpt, event_video, tmp_path):
    res = tool.cli([str(event_ckpt), str(event_video), "--out", str(tmp_path), "--class", "BlueFlash"])
    assert (res["clip"]["class"], res["clip"]["predicted"]) == ("BlueFlash", "RedFlash")
    assert not (tmp_path / "explain.json").exists()  # only with --json
    mean = torch.load(event_ckpt, weights_only=True)
    mean["config"]["model"]["pooling"] = "mean"  # same weights: attention layers are unused then
    mean["model"] = {k: v for k, v in mean["model"].items() if "attention" not in k}
    torch.save(mean, tmp_path / "mean.pt")
    res = tool.cli([str(tmp_path / "mean.pt"), str(event_video), "--out", str(tmp_path / "m"), "--json",
                    str(tmp_path / "numbers.json")])
    assert res["clip"]["attention"] is None
    assert json.loads((tmp_path / "numbers.json").read_text())["clip"]["attention"] is None
    _png(tmp_path / "m" / "gradcam.png")


def _error(tool, capfd, argv) -> str:
    with pytest.raises(SystemExit) as e:
        tool.cli(argv)
    assert e.value.code == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_bad_input_is_one_error_line(tool, event_ckpt, event_video, tmp_path, capfd):
    out = ["--out", str(tmp_path / "out")]
    assert "video not found" in _error(tool, capfd, [str(event_ckpt), str(tmp_path / "nope.mp4"), *out])
    (tmp_path / "notes.mp4").write_text("not a video\n" * 50)
    assert "not a video OpenCV can decode" in _error(tool, capfd, [str(event_ckpt), str(tmp_path / "notes.mp4"), *out])
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    assert "not a checkpoint" in _error(tool, capfd, [str(tmp_path / "notes.pt"), str(event_video), *out])
    assert "checkpoint not found" in _error(tool, capfd, [str(tmp_path / "x.pt"), str(event_video), *out])
    err = _error(tool, capfd, [str(event_ckpt), str(event_video), *out, "--class", "Jump"])
    assert "--class 'Jump': not a class of this checkpoint; classes: RedFlash, BlueFlash" in err
    assert not (tmp_path / "out").exists()  # nothing written before the input is known good


def test_help_describes_the_outputs(tool, capsys):
    with pytest.raises(SystemExit) as e:
        tool.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("gradcam.png", "timeline.png", "--class", "--json", "Grad-CAM", "attention"):
        assert word in text


@pytest.mark.slow
def test_eval_and_explain_pictures_go_to_offline_wandb_runs(deploy_dataset, event_ckpt, event_video, tmp_path):
    # Both tools in one fresh process without network (as the training tracking test runs train.py).
    from PIL import Image

    from tests.engine.test_tracking import (_NET_GUARD, _NET_GUARD_ON, _netns_prefix, _of, _wandb_env, history_rows,
                                            read_wandb_records)

    offline = ("logging.wandb.mode=offline",)
    eval_ckpt = write_tiny_checkpoint(tmp_path / "runs" / "tiny" / "best.pt", deploy_dataset, overrides=offline)
    ckpt = torch.load(event_ckpt, weights_only=True)
    ckpt["config"]["logging"]["wandb"]["mode"] = "offline"
    torch.save(ckpt, tmp_path / "event.pt")
    out_eval, out_explain = tmp_path / "eval", tmp_path / "explain"
    script = _NET_GUARD + _NET_GUARD_ON + (
        "import runpy\n"
        f"sys.argv = ['eval.py', {str(eval_ckpt)!r}, 'eval.num_clips=1', '--out', {str(out_eval)!r}]\n"
        "runpy.run_path('tools/eval.py', run_name='__main__')\n"
        f"sys.argv = ['explain.py', {str(tmp_path / 'event.pt')!r}, {str(event_video)!r}, "
        f"'--out', {str(out_explain)!r}]\n"
        "runpy.run_path('tools/explain.py', run_name='__main__')\n")
    proc = subprocess.run([*_netns_prefix(), sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=_wandb_env(tmp_path, None))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NET_ATTEMPTS=[]" in proc.stdout, proc.stdout[-2000:]
    metrics = json.loads((out_eval / "metrics.json").read_text())
    for out, job, keys in ((out_eval, "eval", ("eval/confusion", "eval/mistakes")),
                           (out_explain, "explain", ("explain/gradcam", "explain/timeline"))):
        (run_dir,) = (out / "wandb").glob("offline-run-*")
        records = read_wandb_records(next(run_dir.glob("run-*.wandb")))
        assert _of(records, "run")[0].job_type == job
        (row,) = [r for r in history_rows(records) if f"{keys[0]}/_type" in r]
        for key in keys:  # the local PNG, as a W&B image file in the run folder
            assert row[f"{key}/_type"] == "image-file"
            local = Image.open(out / (key.split("/")[1] + ".png"))
            assert Image.open(run_dir / "files" / row[f"{key}/path"]).size == local.size
        if job == "eval":
            assert row["eval/top1"] == pytest.approx(metrics["top1"])
