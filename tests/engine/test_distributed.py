"""DDP (torchrun, gloo on CPU), model-parallel placement, both together, sharded evaluation.

The DDP tests launch real processes with ``torchrun --standalone --nproc_per_node=2``: one launch of
``ddp_worker.py`` serves the training, placement and evaluation checks (a module fixture), launches
of ``tools/train.py`` check checkpoints, ``--resume auto``, a backbone with head parameters under
a feature grid and the twin search on cached features end to end, ``ddp_scout_worker.py`` the
search's scouts shared out over the ranks, and ``ddp_stop_worker.py`` the bad-video limit reached
on one rank only.
The CUDA versions (NCCL, GPU placement) are in tests/gpu/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actionrec import build
from actionrec.config import ConfigError, config_from_checkpoint, load_config
from actionrec.engine import distributed as D
from actionrec.engine.checkpoint import load_checkpoint
from tests.helpers import load_module

REPO = Path(__file__).resolve().parents[2]


worker = load_module("ddp_worker", Path(__file__).with_name("ddp_worker.py"))

# DDP averages per-rank gradients; one process sums over the whole batch. The only difference is
# float32 summation order: measured max |diff| 1.2e-7 after 8 SGD steps, ~100x below this bound,
# while skipping the all-reduce changes weights by ~3e-2.
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: on the shared 2-core CI machine one intra-op thread is ~10x faster
    # than two that spin against each other (measured 0.6 s vs 6.2 s for one reference run).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchrun(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def saved(run: Path, name: str, rank: int) -> dict:
    return torch.load(run / f"{name}_rank{rank}.pt")


def assert_same_weights(a: dict, b: dict, *, exact: bool = False) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=k)


# ---------------------------------------------------------------------------------------------
# device specs and placement (no processes)


def test_device_placeholders_evaluate_local_rank_arithmetic_only():
    assert D.expand_device_spec("cuda:{2*local_rank}", 3) == "cuda:6"
    assert D.expand_device_spec("cuda:{2 * local_rank + 1}", 3) == "cuda:7"
    assert D.expand_device_spec("cuda:{(local_rank // 2) % 4}", 5) == "cuda:2"
    assert D.expand_device_spec("cpu", 3) == "cpu"
    for bad in ("cuda:{__import__('os').getpid()}", "cuda:{local_rank**2}", "cuda:{rank}", "cuda:{1/2}", "cuda:{}"):
        with pytest.raises(ValueError, match="integer arithmetic"):
            D.expand_device_spec(bad, 1)


def test_missing_device_error_lists_available_devices():
    missing = f"cuda:{torch.cuda.device_count() + 1}"
    with pytest.raises(ValueError, match=f"'{missing}' does not exist") as e:
        D.resolve_placement("cpu", "cpu", "cuda:{local_rank+%d}" % (torch.cuda.device_count() + 1), local_rank=0)
    assert f"available: {', '.join(D.available_devices())}" in str(e.value)
    with pytest.raises(ValueError, match="not a device name; available: cpu"):
        D.resolve_device("gpu0")
    assert D.resolve_placement("cpu", "", "") == (torch.device("cpu"), torch.device("cpu"))


def test_placement_strings_checked_when_config_loads():
    cfg = load_config(None, ["model.placement.cnn=cuda:{2*local_rank}", "model.placement.lstm=cuda:{2*local_rank+1}"])
    assert cfg.model.placement.lstm == "cuda:{2*local_rank+1}"
    with pytest.raises(ConfigError, match="model.placement.lstm='gpu:1'"):
        load_config(None, ["model.placement.lstm=gpu:1"])


def test_train_tool_fails_on_missing_device_before_reading_data(tmp_path):
    train_tool = load_module("train_tool", REPO / "tools" / "train.py")
    # data.root does not exist: reaching the data would raise FileNotFoundError instead.
    args = train_tool.parse_args([f"data.root={tmp_path / 'missing'}", f"train.output_dir={tmp_path}",
                                  "model.placement.lstm=cuda:{2*local_rank+%d}" % (torch.cuda.device_count() + 1)])
    with pytest.raises(ValueError, match="does not exist on this machine; available: cpu"):
        train_tool.main(args)


def test_ranks_sharing_a_gpu_are_refused(monkeypatch):
    groups = [("node1", ["cuda:0", "cuda:1"]), ("node2", ["cuda:0", "cuda:1"]), ("node1", ["cuda:1", "cuda:2"])]
    monkeypatch.setattr(D, "gather_objects", lambda obj: groups)
    with pytest.raises(ValueError, match="ranks 0 and 2 both use cuda:1 on node1.*local_rank"):
        D.bind_devices([torch.device("cpu")])
    monkeypatch.setattr(D, "gather_objects", lambda obj: groups[:2])  # same ids on other hosts are fine
    D.bind_devices([torch.device("cpu")])


def test_wrap_ddp_refuses_mixed_device_types_and_cpu_sync_bn():
    model = worker.build_model()
    with pytest.raises(ValueError, match="train.sync_bn=true needs CUDA"):
        D.wrap_ddp(model, sync_bn=True)
    model.head.to("meta")  # a second device type without needing a GPU
    with pytest.raises(ValueError, match="one device type"):
        D.wrap_ddp(model)


def test_placement_training_matches_unplaced_training():
    """Two CPU 'devices' take the model-parallel path (features moved, loss on the head's device)."""
    plain = worker.train(batch_size=4)
    placed = worker.train(batch_size=4, placement=("cpu", "cpu"))
    assert placed.cnn_device == placed.head_device == torch.device("cpu") and plain.cnn_device is None
    assert_same_weights(plain.state_dict(), placed.state_dict(), exact=True)


# ---------------------------------------------------------------------------------------------
# two processes: DDP, DDP + placement, sharded evaluation


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    torchrun(str(Path(__file__).with_name("ddp_worker.py")), str(out))
    return out


@pytest.fixture(scope="module")
def single_process() -> dict:
    """The same training in one process on the same global batch (2 ranks x 2 clips = 4)."""
    return worker.train(batch_size=4).state_dict()


@pytest.mark.slow
def test_ddp_ranks_identical_and_equal_to_single_process(ddp_run, single_process):
    r0, r1 = saved(ddp_run, "ddp", 0)["state"], saved(ddp_run, "ddp", 1)["state"]
    assert_same_weights(r0, r1, exact=True)
    assert_same_weights(r0, single_process)
    # Counterfactual: rank 0's shard without the gradient all-reduce ends far outside the tolerance,
    # so the match above really depends on DDP averaging across processes.
    alone = worker.train(batch_size=2, rank=0, world_size=2).state_dict()
    assert max((r0[k] - alone[k]).abs().max().item() for k in r0) > 100 * ATOL


@pytest.mark.slow
def test_ddp_with_placement_matches_ddp_and_single_process(ddp_run, single_process):
    p0, p1 = saved(ddp_run, "ddp_placed", 0)["state"], saved(ddp_run, "ddp_placed", 1)["state"]
    assert_same_weights(p0, p1, exact=True)
    assert_same_weights(p0, saved(ddp_run, "ddp", 0)["state"], exact=True)
    assert_same_weights(p0, single_process)


@pytest.mark.slow
def test_ddp_nonfinite_loss_on_one_rank_is_skipped_by_all(ddp_run):
    """A NaN clip reaches one rank per epoch; both ranks must skip that step together.

    A rank that skipped alone would pair its next gradient all-reduce with the other rank's
    current one (then hang at the end of the epoch); here both count the skip and stay equal to
    one process that skipped the same global batch.
    """
    n0, n1 = saved(ddp_run, "ddp_nan", 0), saved(ddp_run, "ddp_nan", 1)
    assert n0["skipped"] == n1["skipped"] == worker.EPOCHS  # the NaN video is in one batch per epoch
    assert_same_weights(n0["state"], n1["state"], exact=True)
    single = worker.train(batch_size=4, nan_video=worker.NAN_VIDEO)
    assert single.skipped == worker.EPOCHS
    assert_same_weights(n0["state"], single.state_dict())


@pytest.mark.slow
def test_distributed_eval_counts_each_video_once(ddp_run):
    e0, e1 = torch.load(ddp_run / "eval_rank0.pt"), torch.load(ddp_run / "eval_rank1.pt")
    assert e0["backend"] == "gloo"
    # 7 videos over 2 ranks: shards of 4 and 3, no padding duplicate.
    assert e0["shard"].tolist() == [0, 2, 4, 6] and e1["shard"].tolist() == [1, 3, 5]
    for e in (e0, e1):  # every rank holds the same gathered result
        assert e["indices"].tolist() == list(range(7)) and e["num_videos"] == 7
    torch.testing.assert_close(e0["scores"], e1["scores"], rtol=0, atol=0)
    model = worker.build_model()
    model.load_state_dict(saved(ddp_run, "ddp_placed", 0)["state"])
    ref = worker.run_eval(model, rank=0, world_size=1)
    torch.testing.assert_close(e0["scores"], ref["scores"])
    assert e0["top1"] == ref["top1"] and e0["loss"] == pytest.approx(ref["loss"], rel=1e-6)


def test_ddp_ranks_share_the_scouts_and_agree_with_one_process(tmp_path):
    """data.reverse_pairs/mirror_pairs=auto under DDP: rank r trains scouts r, r + 2, ... (not all
    of them), and after the gather every rank holds exactly the scores one process computes."""
    scouts = load_module("ddp_scout_worker", Path(__file__).with_name("ddp_scout_worker.py"))
    torchrun(str(Path(__file__).with_name("ddp_scout_worker.py")), str(tmp_path))
    ranks = [torch.load(tmp_path / f"scouts_rank{r}.pt") for r in (0, 1)]
    from actionrec.data.reversal import SCOUTS, scout_scores
    from actionrec.models.losses import FocalLoss

    seed = scouts.SCOUT_KW["seed"]
    assert SCOUTS == 3
    assert ranks[0]["built"] == [seed, seed + 2] and ranks[1]["built"] == [seed + 1]
    views, labels = scouts.scout_inputs()
    built: list[int] = []
    score, mirrored = scout_scores(lambda: scouts.new_model(built), views, labels, scouts.NUM_CLASSES,
                                   criterion=FocalLoss(), mirror=lambda v: v.flip(-1), **scouts.SCOUT_KW)
    assert built == [seed, seed + 1, seed + 2]
    for r in ranks:
        assert torch.equal(r["score"], score) and torch.equal(r["mirrored"], mirrored)
    # Every scout counted once: each class's clips spread a softmax's worth (1) over the classes.
    torch.testing.assert_close(mirrored.sum(1), torch.ones(scouts.NUM_CLASSES, dtype=torch.float64))
    torch.testing.assert_close(score.sum(), torch.tensor(float(scouts.NUM_CLASSES), dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# tools/train.py under torchrun


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    """tools/train.py on the tiny dataset for 2 steps per epoch, CPU, no W&B, run folder ``out/ddp``."""
    return [str(REPO / "tools" / "train.py"), f"data.root={root}", "data.clip_len=4", "data.resize_short=40",
            "data.crop_size=32", "data.num_workers=0", "model.backbone=test_resnet", "model.hidden_size=16",
            "train.batch_size=2", "train.max_steps_per_epoch=2", "train.device=cpu", "logging.wandb.mode=disabled",
            f"train.output_dir={out}", "train.name=ddp", *extra]


@pytest.mark.slow
def test_train_tool_under_torchrun_checkpoint_and_resume(tiny_dataset, tmp_path):
    common = train_args(tiny_dataset, tmp_path)
    first = torchrun(*common, "train.epochs=1")
    run = tmp_path / "ddp"
    # Only rank 0 writes: one last.pt (+ best.pt), one metrics row, one summary table.
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]
    assert not list(run.glob(".*.tmp"))
    assert first.stdout.count("val_loss") == 1
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["step"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    # A DDP-written checkpoint loads strictly into a plain single-process model.
    cfg = config_from_checkpoint(ckpt["config"])
    model = build.model_from(cfg, len(ckpt["class_names"]))
    model.load_state_dict(ckpt["model"])
    torch.testing.assert_close(model.state_dict(), ckpt["model"], rtol=0, atol=0)

    # Continue under DDP + placement (two CPU 'devices'): the checkpoint does not depend on either.
    second = torchrun(*common, "train.epochs=2", "model.placement.cnn=cpu", "model.placement.lstm=cpu", "--resume", "auto")
    assert "resumed from" in second.stderr and "epoch 2, batch 0, step 2" in second.stderr
    assert "world size 2" in second.stderr
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


@pytest.mark.slow
def test_train_tool_under_torchrun_backbone_with_head_parameters_and_grid(tiny_dataset, tmp_path):
    """MobileNetV3 has a conv_head after its pooling; with a 2x2 feature grid it used to get no
    gradient, and every rank failed at the second step with "Expected to have finished reduction in
    the prior iteration" (the reproduction in the issue, at tiny size)."""
    torchrun(*train_args(tiny_dataset, tmp_path, "model.backbone=mobilenetv3_small_100", "model.feature_grid=2",
                         "train.max_steps_per_epoch=3", "train.epochs=1"))
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["step"] == 3 and ckpt["config"]["model"]["feature_grid"] == 2


@pytest.mark.slow
def test_train_tool_under_torchrun_finds_the_twins_on_cached_features(tiny_dataset, tmp_path):
    """The twin search on cached features with its collectives (rank 0's groups, the scouts' gather,
    rank 0's pairs; mirror_pairs=auto always trains the scouts): both ranks get through it, none
    waiting alone in a collective, and the run records the pairs found in place of ``auto``. With
    model.heads=2 (one epoch each), every step leaves a head out of the graph, which DDP must be told of,
    and the second head's epoch (resumed here) leaves the first exactly as it was."""
    args = train_args(tiny_dataset, tmp_path, "model.freeze_backbone=true", "train.cache_features=true",
                      "train.cache_views=2", f"data.cache_dir={tmp_path / 'cache'}", "data.reverse_pairs=auto",
                      "data.mirror_pairs=auto", "model.heads=2", "train.epochs=2")
    proc = torchrun(*args, "--stop-after", "1")
    assert "world size 2" in proc.stderr and "twins found in" in proc.stderr
    first = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    proc = torchrun(*args, "--resume", "auto")
    assert "head 2 of 2 trains in epochs 2-2" in proc.stderr
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    data = ckpt["config"]["data"]
    assert data["reverse_pairs"] != "auto" and data["mirror_pairs"] != "auto"
    assert int(ckpt["model"]["active_head"]) == 1
    assert all(torch.equal(v, first[k]) for k, v in ckpt["model"].items() if k.startswith(("head.", "contrast.")))
    assert not all(torch.equal(v, first[k]) for k, v in ckpt["model"].items() if k.startswith("more_heads."))


@pytest.mark.slow
def test_bad_video_limit_on_one_rank_stops_every_rank_with_the_message(tmp_path):
    """Only rank 1 sees bad videos; both ranks stop at the same step with the same one-line error."""
    proc = torchrun(str(Path(__file__).with_name("ddp_stop_worker.py")), str(tmp_path), timeout=180, check=False)
    assert proc.returncode != 0
    stops = [json.loads((tmp_path / f"stop_rank{r}.json").read_text()) for r in (0, 1)
             if (tmp_path / f"stop_rank{r}.json").is_file()]
    assert len(stops) == 2, f"a rank did not stop with the message:\n{proc.stderr[-3000:]}"
    assert stops[0]["message"] == stops[1]["message"]
    assert stops[0]["message"].startswith("2 of 16 videos failed to decode, more than data.max_bad_fraction=0.1")
    assert "/videos/bad" in stops[0]["message"]
    assert max(s["seconds"] for s in stops) < 60  # at the first step, not at a collective timeout
    # The json files are written just before exit_on_error prints; a rank that exits first makes
    # torchrun stop the other, so only one printed line is certain.
    assert "error: 2 of 16 videos failed to decode" in proc.stderr
