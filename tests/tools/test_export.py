"""tools/export.py: ONNX parts match torch, int8 head keeps accuracy, the demo runs from ONNX alone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from actionrec import build
from actionrec.deploy.export import onnx_session
from tests.tools.deploy_helpers import REPO, deploy_dataset, load_tool, write_test_video, write_tiny_checkpoint  # noqa: F401


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 passes: thread hand-offs on a busy machine cost more than the work
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(deploy_dataset, tmp_path_factory):
    """(checkpoint, export folder, report) of one tools/export.py run, validation included."""
    root = tmp_path_factory.mktemp("export")
    ckpt = write_tiny_checkpoint(root / "run" / "best.pt", deploy_dataset)
    tool = load_tool("export")
    threads = torch.get_num_threads()
    report = tool.main(tool.parse_args([str(ckpt), "--out", str(root / "onnx"), "--bench-iters", "3"]))
    torch.set_num_threads(threads)
    return ckpt, root / "onnx", report


def test_onnx_parts_match_torch_with_dynamic_batch(exported):
    ckpt, out, report = exported
    assert set(report["onnx_max_abs_diff"]) == {"clip", "backbone", "head"}
    assert all(d <= 1e-4 for d in report["onnx_max_abs_diff"].values()), report["onnx_max_abs_diff"]
    dims = {name: [d.dim_param or d.dim_value for d in onnx.load(out / f"{name}.onnx").graph.input[0].type.tensor_type.shape.dim]
            for name in ("clip", "backbone", "head")}
    assert dims == {"clip": ["batch", 4, 3, 32, 32], "backbone": ["batch", 3, 32, 32], "head": ["batch", "time", 4 * 96]}  # 2x2 grid of 96 channels
    # Independent of the tool's own check: a batch size it did not use, through the whole clip model.
    _, model, _ = build.model_from_checkpoint(ckpt)
    clips = torch.randn(5, 4, 3, 32, 32)
    with torch.no_grad():
        ref = model(clips).numpy()
    got = onnx_session(out / "clip.onnx").run(None, {"clips": clips.numpy()})[0]
    assert got.shape == (5, 8) and np.abs(got - ref).max() <= 1e-4
    meta = json.loads((out / "model.json").read_text())
    assert meta["class_names"] == json.loads(json.dumps(torch.load(ckpt, weights_only=True)["class_names"]))
    assert meta["preprocess"] == {"resize_short": 40, "crop_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert (meta["clip_len"], meta["demo"]["stride"], meta["files"]["head_int8"]) == (4, 2, "head_int8.onnx")


def test_int8_head_keeps_validation_accuracy(exported):
    _, out, report = exported
    acc = report["accuracy"]
    assert acc["videos"] == 8 and set(acc["top1"]) == {"torch_fp32", "torch_int8", "onnx_fp32", "onnx_int8"}
    assert acc["changed_predictions"]["onnx_fp32"] == 0 and acc["max_score_diff"]["onnx_fp32"] < 1e-5
    for name in ("torch_int8", "onnx_int8"):
        assert acc["max_score_diff"][name] < 0.05  # int8 rounding moves probabilities a little...
        assert abs(acc["top1_change_points"][name]) <= 100 * acc["changed_predictions"][name] / acc["videos"]
        if acc["changed_predictions"][name]:  # ...and may only flip predictions fp32 barely made
            assert acc["largest_fp32_margin_of_changed"][name] <= 2 * acc["max_score_diff"][name]
        else:
            assert abs(acc["top1_change_points"][name]) <= 1.0
    assert report["head_state_bytes"]["int8"] < report["head_state_bytes"]["fp32"]
    assert report["sizes_bytes"]["head_int8"] < report["sizes_bytes"]["head"]
    assert all(v > 0 for v in report["speed"]["ms"].values())
    assert json.loads((out / "report.json").read_text())["accuracy"]["top1"] == acc["top1"]


def test_demo_from_onnx_needs_no_torch_and_matches_the_torch_demo(exported, tmp_path):
    ckpt, out, _ = exported
    video = write_test_video(tmp_path / "v.mp4", num_frames=14)
    demo = load_tool("demo")
    ref = demo.cli([str(video), "--checkpoint", str(ckpt), "--no-show"])
    # A fresh interpreter: the ONNX path must not import torch (nor the rest of the training stack).
    code = ("import json, runpy, sys\n"
            f"sys.argv = ['demo.py', {str(video)!r}, '--onnx', {str(out)!r}, '--no-show', '--json', {str(tmp_path / 'o.json')!r}]\n"
            f"runpy.run_path({str(REPO / 'tools' / 'demo.py')!r}, run_name='__main__')\n"
            "print(json.dumps(sorted(m for m in ('torch', 'timm', 'albumentations', 'decord') if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    got = json.loads((tmp_path / "o.json").read_text())
    assert [p["frame"] for p in got["predictions"]] == [p["frame"] for p in ref["predictions"]] == [1, 3, 5, 7, 9, 11, 13]
    for a, b in zip(got["predictions"], ref["predictions"]):
        assert [t["label"] for t in a["topk"]] == [t["label"] for t in b["topk"]]
        assert np.allclose([t["prob"] for t in a["topk"]], [t["prob"] for t in b["topk"]], atol=1e-4)
