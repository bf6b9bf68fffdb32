"""tools/prune.py: FLOPs really halved, the checkpoint is plain data and loads in eval, demo and export."""

from __future__ import annotations

import json

import pytest
import torch

from actionrec import build
from actionrec.engine.checkpoint import CheckpointError
from actionrec.models import pruning
from tests.tools.deploy_helpers import load_tool, write_test_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pruned(trained_checkpoint, tmp_path_factory):
    """(source checkpoint, output folder, report) of tools/prune.py --flops 0.5 with a 2-step fine-tune."""
    out = tmp_path_factory.mktemp("prune") / "pruned"
    tool = load_tool("prune")
    threads = torch.get_num_threads()
    report = tool.main(tool.parse_args([str(trained_checkpoint), "train.max_steps_per_epoch=2", "--flops", "0.5",
                                        "--epochs", "1", "--out", str(out), "--threads", "1"]))
    torch.set_num_threads(threads)
    return trained_checkpoint, out, report


def _convs(model) -> dict[str, tuple[int, int]]:
    return {n: (m.in_channels, m.out_channels) for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)}


def test_pruned_model_has_about_half_the_flops_and_narrower_convs(pruned):
    src, out, report = pruned
    kept = report["after_fine_tune"]["macs"] / report["before"]["macs"]
    assert 0.3 <= kept <= 0.5, kept
    assert report["after_fine_tune"]["params"] < report["before"]["params"]
    assert json.loads((out / "prune_report.json").read_text())["pruning"] == report["pruning"]
    _, before, _ = build.model_from_checkpoint(src)
    cfg, after, _ = build.model_from_checkpoint(out / "pruned.pt")
    # Counted again on the reloaded model, independent of the tool's own figures.
    x = torch.randn(1, cfg.data.sampling.clip_len, 3, cfg.data.crop_size, cfg.data.crop_size)
    assert pruning.count_macs(after, x)[0] == pytest.approx(report["after_fine_tune"]["macs"])
    assert pruning.count_macs(after, x)[0] <= 0.5 * pruning.count_macs(before, x)[0]
    narrower = [n for n, (i, o) in _convs(after).items() if o < _convs(before)[n][1]]
    assert len(narrower) >= len(_convs(before)) // 2
    assert all(o % 8 == 0 for n, (i, o) in _convs(after).items() if n in narrower)  # --round-to 8
    assert after.head.lstm.input_size == after.feature_dim < before.feature_dim  # the LSTM inputs followed
    assert after.head.fc.out_features == before.head.fc.out_features  # the head itself is not pruned
    with torch.no_grad():
        assert after(x).shape == (1, 8)


def test_pruned_checkpoint_is_plain_data(pruned):
    _, out, _ = pruned
    ckpt = torch.load(out / "pruned.pt", weights_only=True)  # no pickled modules

    def plain(v) -> bool:
        return isinstance(v, (int, str)) or (isinstance(v, list) and all(isinstance(x, int) for x in v))

    arch = ckpt["pruned"]["modules"]
    assert arch and all(plain(v) for attrs in arch.values() for v in attrs.values())
    assert {"out_channels", "num_features", "input_size"} <= {k for attrs in arch.values() for k in attrs}


def test_pruned_checkpoint_runs_in_eval_demo_and_export(pruned, tmp_path):
    _, out, report = pruned
    ckpt = str(out / "pruned.pt")
    ev = load_tool("eval")
    res = ev.main(ev.parse_args([ckpt, "eval.num_clips=1", "--out", str(tmp_path / "eval"), "--threads", "1"]))
    assert res["top1"] == pytest.approx(report["after_fine_tune"]["top1"])  # the same model, the same videos
    demo = load_tool("demo")
    video = write_test_video(tmp_path / "v.mp4", num_frames=10)
    assert len(demo.cli([str(video), "--checkpoint", ckpt, "--no-show", "--threads", "1"])["predictions"]) == 5
    export = load_tool("export")
    rep = export.main(export.parse_args([ckpt, "--out", str(tmp_path / "onnx"), "--no-eval", "--bench-iters", "2",
                                         "--threads", "1"]))
    assert all(d <= 1e-4 for d in rep["onnx_max_abs_diff"].values())


def test_flops_out_of_range_and_a_foreign_architecture_are_refused(pruned, tmp_path, capsys):
    tool = load_tool("prune")
    for bad in ("0", "1", "1.5", "-0.2"):
        with pytest.raises(SystemExit) as e:
            tool.parse_args(["x.pt", "--flops", bad])
        assert e.value.code == 2
        assert f"--flops must be in (0, 1), the fraction of the FLOPs to keep; got {float(bad)}" in capsys.readouterr().err
    _, out, _ = pruned
    ckpt = torch.load(out / "pruned.pt", weights_only=True)
    ckpt["pruned"]["modules"]["layer9.conv"] = {"out_channels": 8}
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt: incompatible checkpoint: pruned architecture names a module"):
        build.model_from_checkpoint(tmp_path / "bad.pt")


def test_models_with_stage_hooks_are_refused_in_one_line(trained_checkpoint, tmp_path):
    """model.motion and model.contrast read fixed backbone stages whose widths pruning would change;
    model.heads > 1 were trained on the frozen backbone that pruning fine-tunes."""
    from actionrec.config import config_to_dict
    from actionrec.engine import checkpoint as ckpt_io
    from actionrec.errors import UsageError

    from actionrec.config import load_config

    ckpt = torch.load(trained_checkpoint, weights_only=True)
    cases = (["model.contrast=8", "model.temporal=transformer"], ["model.motion=only", "model.motion_map=4"],
             ["model.heads=2", "model.freeze_backbone=true", "train.epochs=2"])
    for extra in cases:
        overrides = [f"{k}={v}" for k, v in (("model.backbone", "test_resnet"), ("model.hidden_size", 16))] + extra
        cfg = load_config(None, overrides)
        model = build.model_from(cfg, len(ckpt["class_names"]))
        path = tmp_path / "hooked.pt"
        ckpt_io.atomic_save(ckpt_io.make_checkpoint(model=model, optimizer=None, scheduler=None, scaler=None, epoch=0,
                                                    step=0, config=config_to_dict(cfg),
                                                    class_names=ckpt["class_names"]), path)
        tool = load_tool("prune")
        why = "model.heads=2" if "model.heads=2" in extra else "model.motion or model.contrast"
        with pytest.raises(UsageError, match=f"hooked.pt: pruning a model with {why}"):
            tool.main(tool.parse_args([str(path), "--flops", "0.5", "--out", str(tmp_path / "out")]))
        assert not (tmp_path / "out").exists()
