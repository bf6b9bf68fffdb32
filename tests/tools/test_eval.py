"""tools/eval.py (and the demo and export loaders) run a GPU-trained fp16 checkpoint on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from actionrec import build
from tests.tools.deploy_helpers import deploy_dataset, load_tool, write_test_video, write_tiny_checkpoint  # noqa: F401

GPU_TRAINED = ("train.amp=fp16", "train.device=cuda")  # what a V100 run of the UCF101 recipe stores


# Batch-1 passes are tiny: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fp16_ckpt(deploy_dataset, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("runs") / "gpu" / "best.pt", deploy_dataset,
                                 overrides=GPU_TRAINED)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's behaviour")
def test_fp16_checkpoint_evaluates_on_cpu_without_overrides(fp16_ckpt, tmp_path):
    tool = load_tool("eval")
    assert torch.load(fp16_ckpt, weights_only=True)["config"]["train"]["amp"] == "fp16"
    res = tool.main(tool.parse_args([str(fp16_ckpt), "eval.num_clips=1", "--out", str(tmp_path)]))
    assert res["num_videos"] == 8 and 0 <= res["top1"] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["num_videos"] == 8
    with pytest.raises(ValueError, match="fp16 needs CUDA"):  # asking for fp16 on a CPU is still an error
        tool.main(tool.parse_args([str(fp16_ckpt), "eval.num_clips=1", "--out", str(tmp_path), "--amp", "fp16"]))


def test_fp16_checkpoint_runs_in_demo_and_export_loader_on_cpu(fp16_ckpt, tmp_path):
    cfg, model, classes = build.model_from_checkpoint(fp16_ckpt)  # what tools/export.py and tools/demo.py load
    assert cfg.train.amp == "fp16" and len(classes) == 8
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert model(torch.randn(1, cfg.data.sampling.clip_len, 3, 32, 32)).shape == (1, 8)
    demo = load_tool("demo")
    video = write_test_video(tmp_path / "grow.mp4", num_frames=8)
    res = demo.cli([str(video), "--checkpoint", str(fp16_ckpt), "--no-show", "--device", "cpu", "--max-frames", "4"])
    assert res["frames"] == 4 and res["predictions"]


def test_eval_writes_a_gallery_of_the_most_confident_mistakes(deploy_dataset, tmp_path):
    import cv2
    import numpy as np

    ckpt = write_tiny_checkpoint(tmp_path / "runs" / "tiny" / "best.pt", deploy_dataset)  # untrained: mostly wrong
    tool = load_tool("eval")
    out = tmp_path / "eval"
    res = tool.main(tool.parse_args([str(ckpt), "eval.num_clips=1", "--out", str(out), "--mistakes", "3"]))
    wrong = res["num_videos"] - int(np.trace(np.asarray(res["confusion"])))
    assert wrong >= 3
    img = cv2.imread(str(out / "mistakes.png"))
    assert img is not None and img.std() > 20  # decodes, not a blank page
    assert 3 * 150 <= img.shape[0] < 4 * 170 + 60  # one 1.7-inch row (at 100 dpi) per mistake, 3 asked
    assert (out / "confusion.png").is_file()
    assert not (out / "wandb").exists()  # the checkpoint's logging.wandb.mode=disabled
