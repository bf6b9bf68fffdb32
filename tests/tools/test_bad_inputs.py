"""Every tool against a corpus of bad inputs: one ``error:`` line, exit status 2, no traceback.

The corpus holds what users really hand the tools: checkpoints that are empty, text (a system
configuration file, "hello"), random bytes, truncated at several offsets, a directory, a foreign
state dict, a pickled list, a checkpoint of another class count or backbone, a malicious pickle;
videos that are empty, text, random bytes, truncated, a directory named .mp4, a symlink loop, a
header claiming millions of frames, 1x1 pixels, 10,000 pixels wide, a non-UTF-8 file name; configs
with bad YAML, NUL bytes, a list instead of a mapping, binary data. Every case runs the real script
in its own process, forked from one warm interpreter (``run_warm.py``).

Contract checked for each (tool, input): exit status 2 with exactly one non-log stderr line,
``error: ...`` naming the file (or key) and what is wrong, no traceback; nothing half-written
(no output file or folder appears) and the input left as it was. Inputs a tool can legitimately
process (a 1x1 or 10,000 px video, a video whose header overstates its length) may instead succeed
(exit 0), still without a traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.tools.deploy_helpers import REPO, deploy_dataset, write_test_video, write_tiny_checkpoint  # noqa: F401 (fixture)

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")
# Tools that are not in this checkout yet (prune.py: structured pruning) join the sweep once they exist.
TOOLS = {name: str(REPO / "tools" / f"{name}.py") for name in ("train", "eval", "demo", "export", "explain",
                                                                "serve", "prune", "benchmark")}
PREP = {name: str(REPO / "data_prep" / f"{name}.py") for name in ("check_videos", "make_splits", "transcode")}


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (Path.touch, (self.marker,))


def _raw_avi(path: Path, width: int, height: int, frames: int = 3) -> Path:
    """Uncompressed AVI: the only codec that takes 1x1 frames."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("rawvideo", rate=25)
        s.width, s.height, s.pix_fmt = width, height, "bgr24"
        rng = np.random.default_rng(width)
        for _ in range(frames):
            img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        c.mux(s.encode())
    return path


def _claims_millions(src: Path, dst: Path) -> Path:
    """The AVI header's frame counts (avih dwTotalFrames, strh dwLength) patched to 10,000,000."""
    data = bytearray(src.read_bytes())
    avih = data.index(b"avih") + 8
    data[avih + 16:avih + 20] = (10_000_000).to_bytes(4, "little")
    strh = data.index(b"strh") + 8
    data[strh + 32:strh + 36] = (10_000_000).to_bytes(4, "little")
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, deploy_dataset) -> dict:
    tmp = tmp_path_factory.mktemp("bad")
    good = write_tiny_checkpoint(tmp / "good.pt", deploy_dataset)
    raw = good.read_bytes()
    ck = tmp / "ckpt"
    ck.mkdir()
    marker = tmp / "payload-ran"
    c: dict[str, Path] = {}
    c["empty"] = ck / "empty.pt"
    c["empty"].write_bytes(b"")
    c["hello"] = ck / "hello.pt"
    c["hello"].write_text("hello\n")
    c["sysconf"] = ck / "passwd.pt"
    c["sysconf"].write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    c["random"] = ck / "random.pt"
    c["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    for frac in (0.1, 0.5, 0.9):
        c[f"cut{int(frac * 100)}"] = ck / f"cut{int(frac * 100)}.pt"
        c[f"cut{int(frac * 100)}"].write_bytes(raw[: int(len(raw) * frac)])
    c["directory"] = ck / "folder.pt"
    c["directory"].mkdir()
    c["foreign"] = ck / "state_dict.pt"
    torch.save({"conv.weight": torch.ones(2, 2)}, c["foreign"])
    c["list"] = ck / "list.pt"
    torch.save([1, 2, 3], c["list"])
    ckpt = torch.load(good, weights_only=True)
    other = dict(ckpt, class_names=ckpt["class_names"][:3])  # 3 class names, an 8-way classifier
    c["classes"] = ck / "classes.pt"
    torch.save(other, c["classes"])
    cfg = json.loads(json.dumps(ckpt["config"]))
    cfg["model"]["backbone"] = "resnet18"  # weights are test_resnet's
    c["backbone"] = ck / "backbone.pt"
    torch.save(dict(ckpt, config=cfg), c["backbone"])
    c["evil"] = ck / "evil.pt"
    torch.save({"model": {}, "config": {}, "class_names": [], "extra": _Payload(marker)}, c["evil"])

    vd = tmp / "videos"
    vd.mkdir()
    video = write_test_video(vd / "good.mp4", num_frames=24)
    v: dict[str, Path] = {}
    v["empty"] = vd / "empty.mp4"
    v["empty"].write_bytes(b"")
    v["text"] = vd / "text.avi"
    v["text"].write_text("this is not a video\n" * 20)
    v["random"] = vd / "random.mp4"
    v["random"].write_bytes(np.random.default_rng(1).integers(0, 256, 30_000, dtype=np.uint8).tobytes())
    v["truncated"] = vd / "truncated.mp4"
    v["truncated"].write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # index at the end: lost
    v["directory"] = vd / "folder.mp4"
    v["directory"].mkdir()
    v["loop"] = vd / "loop.mp4"
    os.symlink(v["loop"].name, v["loop"])  # points at itself
    avi = _raw_avi(vd / "small.avi", 64, 48, frames=12)
    v["millions"] = _claims_millions(avi, vd / "millions.avi")
    v["1x1"] = _raw_avi(vd / "one_pixel.avi", 1, 1)
    v["wide"] = _raw_avi(vd / "wide.avi", 10_000, 2)
    v["non_utf8"] = Path(os.fsdecode(bytes(vd) + b"/caf\xe9.mp4"))
    shutil.copy(video, v["non_utf8"])
    vroot = tmp / "vroot" / "Odd"  # a one-class dataset of every bad file, for make_splits
    vroot.mkdir(parents=True)
    for kind, path in v.items():
        if path.is_file() and not path.is_symlink():
            shutil.copy(path, vroot / os.path.basename(path))
    shutil.copy(video, vroot / "good2.mp4")

    cf = tmp / "configs"
    cf.mkdir()
    cfgs = {"bad_yaml": b"train:\n  epochs: [1,\n", "nul": b"train:\n  epochs: 1\x00\n",
            "list": b"- train\n- data\n", "binary": bytes(range(256)) * 4,
            "unknown": b"train:\n  epoch: 3\n", "wrong_type": b"train:\n  epochs: many\n"}
    conf = {}
    for name, data in cfgs.items():
        conf[name] = cf / f"{name}.yaml"
        conf[name].write_bytes(data)
    return {"tmp": tmp, "good": good, "video": video, "ckpt": c, "videos": v, "configs": conf,
            "marker": marker, "data": deploy_dataset}


def _run_all(corpus: dict, cases: dict[str, tuple[str, list[str]]]) -> dict[str, subprocess.CompletedProcess]:
    tmp = corpus["tmp"]
    spec = [{"script": script, "argv": argv, "cwd": str(tmp), "out": str(tmp / f"out-{name}"), "timeout": 120}
            for name, (script, argv) in cases.items()]
    (tmp / "cases.json").write_text(json.dumps(spec))
    warm = subprocess.run([sys.executable, str(Path(__file__).with_name("run_warm.py")), str(tmp / "cases.json")],
                          capture_output=True, text=True, timeout=1200, cwd=tmp)
    assert warm.returncode == 0, warm.stderr[-3000:]
    out = {}
    for name, (script, argv) in cases.items():
        o = tmp / f"out-{name}"
        out[name] = subprocess.CompletedProcess([script, *argv], int(Path(f"{o}.rc").read_text()),
                                                Path(f"{o}.stdout").read_text(errors="replace"),
                                                Path(f"{o}.stderr").read_text(errors="replace"))
    return out


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    other = [line for line in proc.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(other) == 1 and other[0].startswith("error: "), proc.stderr[-2000:]
    return other[0]


# What each kind of bad checkpoint must be called (the README's table says the same).
CKPT_WORDS = {"empty": "empty", "hello": "not a checkpoint", "sysconf": "not a checkpoint",
              "random": "not a checkpoint", "cut10": "not a checkpoint", "cut50": "not a checkpoint",
              "cut90": "not a checkpoint", "directory": ("not a checkpoint", "folder"),
              "foreign": "not an actionrec checkpoint", "list": "not an actionrec checkpoint",
              "classes": "class", "backbone": "incompatible checkpoint", "evil": "refused: it holds code objects"}
# Resuming takes the model from the command line, not the checkpoint's config: these weights fit it.
ACCEPTED = {("train", "backbone")}


@pytest.fixture(scope="module")
def checkpoint_runs(corpus) -> dict:
    video, tmp, data = str(corpus["video"]), corpus["tmp"], corpus["data"]
    common = [f"data.root={data}", f"train.output_dir={tmp / 'runs'}", "model.backbone=test_resnet",
              "model.hidden_size=16", "data.clip_len=4", "data.resize_short=40", "data.crop_size=32",
              "train.device=cpu", "data.num_workers=0", "logging.wandb.mode=disabled", "train.epochs=1"]
    cases = {}
    for kind, path in corpus["ckpt"].items():
        p = str(path)
        cases[f"eval-{kind}"] = (TOOLS["eval"], [p, "--out", str(tmp / f"eval-{kind}")])
        cases[f"export-{kind}"] = (TOOLS["export"], [p, "--out", str(tmp / f"export-{kind}"), "--no-eval"])
        cases[f"demo-{kind}"] = (TOOLS["demo"], [video, "--checkpoint", p, "--no-show", "--json",
                                                 str(tmp / f"demo-{kind}.json")])
        cases[f"train-{kind}"] = (TOOLS["train"], [*common, "--resume", p])
        if Path(TOOLS["explain"]).exists():
            cases[f"explain-{kind}"] = (TOOLS["explain"], [p, video, "--out", str(tmp / f"explain-{kind}")])
        if Path(TOOLS["serve"]).exists():
            cases[f"serve-{kind}"] = (TOOLS["serve"], [p, "--port", "0"])
        if Path(TOOLS["prune"]).exists():
            cases[f"prune-{kind}"] = (TOOLS["prune"], [p, "--flops", "0.5", "--out", str(tmp / f"prune-{kind}")])
    return _run_all(corpus, cases)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CKPT_WORDS))
def test_every_checkpoint_tool_rejects_a_bad_checkpoint_in_one_line(corpus, checkpoint_runs, kind):
    path = corpus["ckpt"][kind]
    tools = sorted({name.split("-")[0] for name in checkpoint_runs if name.endswith(f"-{kind}")})
    assert {"eval", "export", "demo", "train"} <= set(tools)
    for tool in tools:
        if (tool, kind) in ACCEPTED:
            assert checkpoint_runs[f"{tool}-{kind}"].returncode == 0
            continue
        line = _error_line(checkpoint_runs[f"{tool}-{kind}"])
        assert str(path) in line, (tool, line)
        words = CKPT_WORDS[kind] if isinstance(CKPT_WORDS[kind], tuple) else (CKPT_WORDS[kind],)
        assert any(w in line for w in words), (tool, line)
        assert "weights_only=False" not in line and "weights_only" not in checkpoint_runs[f"{tool}-{kind}"].stderr
    tmp = corpus["tmp"]
    # Nothing half-written: no export folder, eval report, demo JSON or explain folder appeared.
    for leftover in (tmp / f"export-{kind}", tmp / f"eval-{kind}", tmp / f"demo-{kind}.json", tmp / f"explain-{kind}"):
        assert not leftover.exists() or not any(leftover.iterdir()), leftover
    assert not corpus["marker"].exists()  # the malicious pickle ran nothing


VIDEO_ERRORS = {"empty": "", "text": "", "random": "", "truncated": "", "directory": "not a",
                "loop": "", "non_utf8": None, "millions": None, "1x1": None, "wide": None}


@pytest.fixture(scope="module")
def video_runs(corpus) -> dict:
    tmp, good = corpus["tmp"], str(corpus["good"])
    cases = {}
    for kind, path in corpus["videos"].items():
        p = os.fsdecode(path)
        cases[f"demo-{kind}"] = (TOOLS["demo"], [p, "--checkpoint", good, "--no-show",
                                                 "--json", str(tmp / f"vdemo-{kind}.json")])
        if Path(TOOLS["explain"]).exists():
            cases[f"explain-{kind}"] = (TOOLS["explain"], [good, p, "--out", str(tmp / f"vexplain-{kind}")])
    # The dataset tools take the whole folder: each bad file is reported, the rest processed.
    cases["check_videos-folder"] = (PREP["check_videos"], [str(corpus["videos"]["empty"].parent.parent),
                                                           "--workers", "0", "--report", str(tmp / "check.json")])
    cases["transcode-folder"] = (PREP["transcode"], [str(tmp / "vroot"), str(tmp / "transcoded"),
                                                     "--workers", "0", "--report", str(tmp / "transcode.json")])
    cases["make_splits-folder"] = (PREP["make_splits"], [str(corpus["videos"]["empty"].parent.parent),
                                                         "--out-dir", str(tmp / "splits")])
    # make_splits on a root whose class folder holds the bad files (and no UCF names)
    cases["make_splits-videos"] = (PREP["make_splits"], [str(corpus["videos"]["empty"].parent.parent / "vroot"),
                                                         "--out-dir", str(tmp / "vsplits")])
    return _run_all(corpus, cases)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(VIDEO_ERRORS))
def test_video_tools_reject_or_handle_every_bad_video(corpus, video_runs, kind):
    path = os.fsdecode(corpus["videos"][kind])
    for name, proc in video_runs.items():
        if not name.endswith(f"-{kind}"):
            continue
        if VIDEO_ERRORS[kind] is None and proc.returncode == 0:  # odd but valid: processed
            assert "Traceback" not in proc.stderr
            continue
        line = _error_line(proc)
        assert os.path.basename(path) in line or repr(path)[1:-1] in line, (name, line)
        assert VIDEO_ERRORS[kind] in line, (name, line)


@pytest.mark.slow
def test_dataset_tools_report_bad_videos_and_carry_on(corpus, video_runs):
    check = video_runs["check_videos-folder"]
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr[-2000:]  # 1: bad files found
    report = {v["path"]: v["status"] for v in json.loads((corpus["tmp"] / "check.json").read_text())["videos"]}
    assert report["videos/empty.mp4"] == report["videos/text.avi"] == "unreadable"
    assert report["videos/good.mp4"] == "ok" and report["videos/millions.avi"] in ("ok", "seek_unreliable")
    assert "videos/folder.mp4" not in report  # a directory is not a video file
    trans = video_runs["transcode-folder"]
    assert "Traceback" not in trans.stderr and trans.returncode in (0, 1), trans.stderr[-2000:]
    out = corpus["tmp"] / "transcoded" / "Odd"
    assert (out / "good2.mp4").is_file() and (out / "one_pixel.mp4").is_file()
    assert not (out / "empty.mp4").exists() and not (out / "text.mp4").exists()  # nothing half-written
    assert not [p for p in out.iterdir() if p.name.startswith(".") or "tmp" in p.name]
    splits = video_runs["make_splits-folder"]  # folders of checkpoints and configs, not classes of videos
    assert "has no videos" in _error_line(splits)
    assert "caf\\xe9.mp4" in (line := _error_line(video_runs["make_splits-videos"])) and "UTF-8" in line


@pytest.fixture(scope="module")
def config_runs(corpus) -> dict:
    cases = {f"train-{k}": (TOOLS["train"], ["--config", str(p)]) for k, p in corpus["configs"].items()}
    cases["benchmark-options"] = (TOOLS["benchmark"], ["train-step", "--quick", "--options", "bogus"])
    cases["benchmark-command"] = (TOOLS["benchmark"], ["everything"])
    cases["eval-override"] = (TOOLS["eval"], [str(corpus["good"]), "eval.num_clips=zero"])
    cases["demo-stride"] = (TOOLS["demo"], [str(corpus["video"]), "--checkpoint", str(corpus["good"]), "--no-show",
                                            "--stride", "0"])
    return _run_all(corpus, cases)


CONFIG_WORDS = {"bad_yaml": "invalid YAML", "nul": "", "list": "mapping", "binary": "",
                "unknown": "unknown config key 'train.epoch'", "wrong_type": "train.epochs"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CONFIG_WORDS))
def test_bad_config_files_give_one_line(corpus, config_runs, kind):
    line = _error_line(config_runs[f"train-{kind}"])
    assert str(corpus["configs"][kind]) in line and CONFIG_WORDS[kind] in line, line


@pytest.mark.slow
@pytest.mark.parametrize("case, words", [("benchmark-options", "bogus"), ("benchmark-command", "everything"),
                                         ("eval-override", "eval.num_clips"), ("demo-stride", "stride")])
def test_bad_options_give_one_line(config_runs, case, words):
    proc = config_runs[case]
    assert "Traceback" not in proc.stderr and proc.returncode == 2, proc.stderr[-2000:]
    assert words in proc.stderr.strip().splitlines()[-1]


def test_crlf_config_loads_like_lf(tmp_path):
    from actionrec.config import load_config

    lf, crlf = tmp_path / "lf.yaml", tmp_path / "crlf.yaml"
    text = "train:\n  epochs: 3\ndata:\n  clip_len: 6\n"
    lf.write_text(text)
    crlf.write_bytes(text.replace("\n", "\r\n").encode())
    assert load_config(crlf) == load_config(lf) and load_config(crlf).train.epochs == 3
