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


@pytest.fixture(scope="module")
def exported_int8(trained_checkpoint, tmp_path_factory):
    """(checkpoint, export folder, report) of tools/export.py --int8 on a trained checkpoint."""
    out = tmp_path_factory.mktemp("export_int8") / "onnx"
    tool = load_tool("export")
    threads = torch.get_num_threads()
    report = tool.main(tool.parse_args([str(trained_checkpoint), "--out", str(out), "--int8", "--calib-frames", "32",
                                        "--bench-iters", "3", "--threads", "1"]))
    torch.set_num_threads(threads)
    return trained_checkpoint, out, report


def test_int8_backbone_is_static_qdq_with_per_channel_weights(exported_int8):
    _, out, report = exported_int8
    graph = onnx.load(out / "backbone_int8.onnx").graph
    ops = [n.op_type for n in graph.node]
    assert "DynamicQuantizeLinear" not in ops  # static: activation ranges fixed by calibration
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and ops.count("QuantizeLinear") >= len(convs) and ops.count("DequantizeLinear") >= 2 * len(convs)
    inits = {t.name: t for t in graph.initializer}
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and onnx.numpy_helper.to_array(inits[n.input[0]]).ndim == 4]
    assert len(weight_dq) == len(convs)  # every conv weight is stored as int8 ...
    assert all(onnx.numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in weight_dq)  # ... one scale per channel
    assert all(onnx.numpy_helper.to_array(inits[n.input[0]]).dtype == np.int8 for n in weight_dq)
    assert report["sizes_bytes"]["backbone_int8"] < 0.5 * report["sizes_bytes"]["backbone"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["files"]["backbone_int8"] == "backbone_int8.onnx"


def test_int8_model_agrees_with_fp32_on_validation_videos(exported_int8):
    ckpt, out, report = exported_int8
    q = report["int8"]
    assert q["videos"] == 8 and set(q["top1"]) == {"fp32", "int8_backbone", "int8"}
    assert json.loads((out / "report.json").read_text())["int8"]["top1"] == q["top1"]
    assert all(v > 0 for v in q["frame_ms"].values())
    # Independent of the report: real validation frames through both backbones and both heads.
    cfg, _, _ = build.model_from_checkpoint(ckpt)
    ds = build.eval_dataset(cfg, build.dataset_split(cfg.data).test, num_clips=2)
    clips = np.stack([ds[i]["clip"].numpy() for i in range(len(ds))])  # (N, V, T, C, H, W)
    frames = clips.reshape(-1, *clips.shape[3:])
    run = {k: onnx_session(out / f"{k}.onnx") for k in ("backbone", "backbone_int8", "head", "head_int8")}
    feats = {k: run[k].run(None, {"frames": frames})[0] for k in ("backbone", "backbone_int8")}
    rel = np.linalg.norm(feats["backbone_int8"] - feats["backbone"]) / np.linalg.norm(feats["backbone"])
    assert rel < 0.1, rel
    n, v, t = clips.shape[:3]
    logits = {name: run[head].run(None, {"features": feats[bb].reshape(n * v, t, -1)})[0]
              for name, bb, head in (("fp32", "backbone", "head"), ("int8", "backbone_int8", "head_int8"))}
    spread = np.ptp(logits["fp32"])
    assert np.abs(logits["int8"] - logits["fp32"]).max() < 0.1 * spread
    top2 = np.sort(logits["fp32"], 1)[:, -2:]
    flips = logits["int8"].argmax(1) != logits["fp32"].argmax(1)
    # A view may change its label only where fp32's two best logits were nearly tied.
    assert not flips.any() or (top2[flips, 1] - top2[flips, 0]).max() < 2 * np.abs(logits["int8"] - logits["fp32"]).max()
    assert flips.mean() <= 0.125


def test_demo_and_serve_run_the_int8_export(exported_int8, exported, tmp_path, capfd):
    from actionrec.deploy.service import load_served_model

    _, out, _ = exported_int8
    video = write_test_video(tmp_path / "v.mp4", num_frames=14)
    demo = load_tool("demo")
    fp32 = demo.cli([str(video), "--onnx", str(out), "--no-show", "--threads", "1"])
    int8 = demo.cli([str(video), "--onnx", str(out), "--int8", "--no-show", "--threads", "1"])
    assert [p["frame"] for p in int8["predictions"]] == [p["frame"] for p in fp32["predictions"]] == [1, 3, 5, 7, 9, 11, 13]
    for a, b in zip(int8["predictions"], fp32["predictions"]):
        assert np.allclose([t["prob"] for t in a["topk"]], [t["prob"] for t in b["topk"]], atol=0.05)
    served = load_served_model(out, threads=1, int8=True)
    assert served.info["runtime"] == "onnxruntime int8"
    frames = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ref = onnx_session(out / "backbone_int8.onnx").run(None, {"frames": frames})[0]
    assert np.array_equal(served.backend.features_batch(frames), ref)  # the int8 backbone, not the fp32 one
    capfd.readouterr()
    with pytest.raises(SystemExit):  # an export made without --int8 has no int8 backbone
        demo.cli([str(video), "--onnx", str(exported[1]), "--int8", "--no-show"])
    assert "no int8 backbone in this export; run tools/export.py with --int8" in capfd.readouterr().err
