"""Frozen-backbone feature cache: exact reuse, invalidation, and head-only training from the cache."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from actionrec import build
from actionrec.data.dataset import ClipSampling, VideoClipDataset
from actionrec.data.loader import build_loader
from actionrec.data.splits import load_split
from actionrec.data.synthetic import TEMPORAL_PAIRS, generate_synthetic_dataset
from actionrec.data.transforms import eval_transform
from actionrec.engine.feature_cache import FeatureCache, FeatureDataset, extract_features
from actionrec.engine.loop import train_one_epoch
from actionrec.engine.optim import create_optimizer, create_scheduler
from actionrec.models.factory import create_model

REPO = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny ops on a shared 2-core machine: a second OpenMP thread spin-waits on a busy core and
    # made a 4x4x96 LSTM step 10-100x slower; one thread keeps these tests fast and steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fc") / "data"
    return generate_synthetic_dataset(root, num_groups=2, clips_per_group=1, width=64, height=48, max_frames=16, seed=3)


def _model(seed: int = 0, dropout: float = 0.5):
    torch.manual_seed(seed)
    return create_model("cnn_lstm", num_classes=8, backbone="test_resnet", hidden_size=16, dropout=dropout,
                        freeze_backbone=True).eval()


def _dataset(root: Path, *, clip_len: int = 4, crop: int = 32, num_clips: int = 1, backend: str = "decord"):
    split = load_split(root, split=1)
    samples = list(split.train) + list(split.test)
    return VideoClipDataset(
        samples, sampling=ClipSampling(clip_len=clip_len, num_clips=num_clips),
        transforms=[eval_transform(resize_short=40, crop_size=crop, mean=MEAN, std=STD)], train=False, backend=backend)


def _cache(root, model, ds, **over) -> FeatureCache:
    kw = dict(backbone_name="test_resnet", backbone=model.backbone, transforms=ds.transforms, sampling=ds.sampling,
              backend=ds.backend, seek=ds.seek, precision="cpu:none")
    kw.update(over)
    return FeatureCache(root, **kw)


def test_cached_features_equal_fresh_and_are_reused_from_disk(tiny_root, tmp_path, monkeypatch):
    model, ds = _model(), _dataset(tiny_root, num_clips=2)
    cache = _cache(tmp_path / "feats", model, ds)
    assert extract_features(model, ds, cache, batch_size=4) == []
    entries = sorted(cache.dir.glob("*.pt"))
    assert len(entries) == len(ds)
    assert json.loads((cache.dir / "key.json").read_text())["backbone"] == "test_resnet"
    # Each entry holds its own video's features only, not the extraction batch it was a row of
    # (torch.save writes a tensor's whole storage): on disk, 2 clips x 4 frames x D floats plus
    # the file's small overhead, not 4 videos' worth.
    entry_bytes = 2 * 4 * model.feature_dim * 4
    assert all(entry_bytes < e.stat().st_size < entry_bytes + 4096 for e in entries), [e.stat().st_size for e in entries]
    with torch.no_grad():
        for i in (0, 5, len(ds) - 1):
            fresh = model.clip_features(ds[i]["clip"])  # (V, T, D) from a one-video batch
            assert cache.get(ds.paths[i]).shape == (2, 4, model.feature_dim)
            torch.testing.assert_close(cache.get(ds.paths[i]), fresh, rtol=1e-5, atol=1e-5)

    # A new cache object with the same inputs reads the entries back and computes nothing.
    reread = _cache(tmp_path / "feats", model, ds)
    monkeypatch.setattr(model, "clip_features", lambda *a: pytest.fail("recomputed a cached clip"))
    assert extract_features(model, ds, reread, batch_size=4) == []
    for i in range(len(ds)):
        assert torch.equal(reread.get(ds.paths[i]), cache.get(ds.paths[i]))
    train_items = FeatureDataset(ds, reread, train=True)
    assert train_items[3]["clip"].shape == (4, model.feature_dim) and train_items[3]["label"] == ds.labels[3]


def test_key_changes_with_backbone_transform_sampling_decoder_and_file(tiny_root, tmp_path):
    model, ds = _model(), _dataset(tiny_root)
    base = _cache(None, model, ds)
    assert _cache(None, _model(), _dataset(tiny_root)).key == base.key  # same inputs, same key
    other_weights = _model()
    with torch.no_grad():
        next(other_weights.backbone.parameters()).view(-1)[0] += 1e-3
    other_stats = _model()
    bn = next(m for m in other_stats.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean += 0.1  # a buffer changes the features too
    changed = {
        "weights": _cache(None, other_weights, ds),
        "bn statistics": _cache(None, other_stats, ds),
        "backbone name": _cache(None, model, ds, backbone_name="resnet18"),
        "feature grid": _cache(None, model, ds, feature_grid=2),
        "crop size": _cache(None, model, _dataset(tiny_root, crop=24)),
        "clip_len": _cache(None, model, _dataset(tiny_root, clip_len=6)),
        "num_clips": _cache(None, model, _dataset(tiny_root, num_clips=3)),
        "decoder": _cache(None, model, _dataset(tiny_root, backend="pyav")),
        "precision": _cache(None, model, ds, precision="cpu:bf16"),
    }
    keys = {name: c.key for name, c in changed.items()}
    assert base.key not in keys.values() and len(set(keys.values())) == len(keys), keys

    # Per video: a replaced file (new size or mtime) misses, the untouched ones still hit.
    cache = _cache(tmp_path / "feats", model, ds)
    extract_features(model, ds, cache, batch_size=8)
    src = Path(ds.paths[0])
    copy = tmp_path / "video.avi"
    copy.write_bytes(src.read_bytes())
    feats = cache.get(src)
    cache.put(copy, feats)
    assert torch.equal(_cache(tmp_path / "feats", model, ds).get(copy), feats)
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = _cache(tmp_path / "feats", model, ds)
    assert fresh.get(copy) is None and fresh.get(src) is not None


def test_head_only_epochs_from_cache_lower_the_loss(tiny_root, tmp_path):
    model, ds = _model(dropout=0.0), _dataset(tiny_root)
    cache = _cache(None, model, ds)
    extract_features(model, ds, cache, batch_size=8)
    loader = build_loader(FeatureDataset(ds, cache, train=True), batch_size=4, train=True, num_workers=0)
    optimizer = create_optimizer(model, "adamw", lr=1e-2, weight_decay=0.0)
    scheduler = create_scheduler(optimizer, warmup_steps=0, total_steps=100, min_ratio=1.0)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    losses = []
    for epoch in range(24):  # a random frozen test_resnet gives low-contrast features: the head needs a few epochs
        loader.sampler.set_epoch(epoch)
        out = train_one_epoch(model, loader, torch.nn.CrossEntropyLoss(), optimizer, scheduler, epoch=epoch,
                              autocast=contextlib.nullcontext, scaler=torch.amp.GradScaler("cpu", enabled=False),
                              show_progress=False)
        losses.append(out["loss"])
    assert min(losses[-4:]) < 0.75 * losses[0], losses
    for k, v in model.backbone.state_dict().items():  # frozen: weights and batch-norm statistics untouched
        assert torch.equal(v, backbone_before[k]), k


def test_train_tool_with_cache_features(tiny_root, tmp_path):
    spec = importlib.util.spec_from_file_location("train_tool", REPO / "tools" / "train.py")
    train_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tool)
    overrides = [
        f"data.root={tiny_root}", f"data.cache_dir={tmp_path / 'cache'}", "data.clip_len=4", "data.resize_short=40",
        "data.crop_size=32", "data.num_workers=0", "model.backbone=test_resnet", "model.hidden_size=16",
        "model.freeze_backbone=true", "train.cache_features=true", "train.batch_size=4", "train.epochs=2",
        "train.device=cpu", "train.cpu_threads=1", "logging.wandb.mode=disabled", f"train.output_dir={tmp_path / 'runs'}", "train.name=cached",
    ]
    result = train_tool.main(train_tool.parse_args(["--config", str(REPO / "configs" / "quickstart.yaml"), *overrides]))
    feats = sorted((tmp_path / "cache" / "features").glob("*/*.pt"))
    split = load_split(tiny_root, split=1)
    assert len(feats) == len(split.train) + len(split.test)  # one entry per train and per val video
    assert 0 <= result["last_val"]["top1"] <= 1
    ckpt = torch.load(Path(result["run_dir"]) / "last.pt", map_location="cpu", weights_only=False)
    # The plain CNNLSTM is saved (backbone included), so the checkpoint works without the cache.
    assert ckpt["config"]["model"]["feature_grid"] == 2  # from configs/quickstart.yaml: grid features get cached too
    fresh = create_model("cnn_lstm", num_classes=8, backbone="test_resnet", hidden_size=16, feature_grid=2)
    fresh.load_state_dict(ckpt["model"])


def test_augmented_views_are_the_train_pipeline_and_epochs_cycle_through_them(tiny_root, tmp_path):
    from actionrec.data.transforms import train_transform

    model = _model()
    split = load_split(tiny_root, split=1)
    ds = VideoClipDataset(split.train, sampling=ClipSampling(clip_len=4), train=True, backend="decord", seed=5,
                          transforms=[train_transform(resize_short=40, crop_size=32, mean=MEAN, std=STD, hflip=False,
                                                      crop_scale=(0.4, 1.0), crop_ratio=(0.75, 1.33), color_jitter=0.3)])
    caches = []
    for v in range(3):
        ds.set_epoch(v)
        cache = _cache(tmp_path / "feats", model, ds, view=(5, v))
        assert extract_features(model, ds, cache, batch_size=2) == []
        with torch.no_grad():  # view v is exactly what training epoch v would have drawn
            fresh = model.clip_features(ds[0]["clip"][None])[0]
        torch.testing.assert_close(cache.get(ds.paths[0])[0], fresh, rtol=1e-5, atol=1e-5)
        caches.append(cache)
    assert len({c.key for c in caches}) == 3  # the view number is part of the key
    assert not torch.allclose(caches[0].get(ds.paths[0]), caches[1].get(ds.paths[0]))
    feats = FeatureDataset(ds, caches, train=True)
    for epoch in (0, 1, 2, 3, 7):
        feats.set_epoch(epoch)
        torch.testing.assert_close(feats[0]["clip"], caches[epoch % 3].get(ds.paths[0])[0])
    assert feats[0]["clip"].shape == (4, model.feature_dim)
    # The same view of the same seed is read back from disk, not recomputed.
    ds.set_epoch(1)
    again = _cache(tmp_path / "feats", model, ds, view=(5, 1))
    assert again.key == caches[1].key and again.get(ds.paths[0]) is not None


@pytest.mark.parametrize("pairs,mirror,grid", [("[[Grow, Shrink]]", "[[MoveLeft, MoveRight], [Grow, Grow]]", 1),
                                               ("auto", "auto", 2)])
def test_train_tool_with_augmented_views_motion_and_transformer(tiny_root, tmp_path, pairs, mirror, grid, capsys,
                                                               monkeypatch):
    """The cpu_pretrained recipe's path: K cached train views, motion features, the appearance
    contrast (channel means, or with the recipe's contrast_grid=2 also their cells), transformer head,
    logit-adjusted cross-entropy, reverse and mirror pairs named or found; the checkpoint then runs on
    raw clips (eval, demo) without the cache."""
    from tests.helpers import load_tool

    train_tool = load_tool("train")
    events = []  # thread choices (cores left to workers) and twin searches, in order
    monkeypatch.setattr(train_tool.D, "set_cpu_threads",
                        lambda requested, *, num_workers: events.append(("threads", num_workers)) or 1)
    search = build.find_twins_from
    monkeypatch.setattr(build, "find_twins_from", lambda *a, **k: events.append(("search",)) or search(*a, **k))
    overrides = [
        f"data.root={tiny_root}", f"data.cache_dir={tmp_path / 'cache'}", "data.clip_len=4", "data.resize_short=40",
        "data.crop_size=32", "data.num_workers=0", "model.backbone=test_resnet", "model.hidden_size=16",
        "model.freeze_backbone=true", "model.temporal=transformer", "model.motion=only", "model.motion_map=4",
        "model.contrast=8", f"model.contrast_grid={grid}", f"data.reverse_pairs={pairs}", f"data.mirror_pairs={mirror}",
        "data.hflip=false", "train.cache_features=true", "train.cache_views=3",
        "train.batch_size=4", "train.epochs=2", "loss.name=ce", "loss.alpha=null", "loss.logit_adjust=1.0",
        "train.device=cpu", "train.cpu_threads=1", "logging.wandb.mode=disabled", f"train.output_dir={tmp_path / 'runs'}",
        "train.name=views",
    ]
    result = train_tool.main(train_tool.parse_args(["--config", str(REPO / "configs" / "quickstart.yaml"), *overrides]))
    split = load_split(tiny_root, split=1)
    # The run's config records the pairs it trained with: auto is replaced by what was found.
    saved = yaml.safe_load((Path(result["run_dir"]) / "config.yaml").read_text())["data"]
    if pairs == "auto":
        # The threads are chosen again once the features are cached, and the twin search runs with them.
        assert events == [("threads", 0), ("threads", 0), ("search",)]
        err = capsys.readouterr().err
        assert "data.reverse_pairs=auto: " in err and "data.mirror_pairs=auto: " in err
        reverse = saved["reverse_pairs"]
        assert isinstance(reverse, list) and all(sorted(p) in ([sorted(t) for t in TEMPORAL_PAIRS]) for p in reverse)
        # Mirrored, a move left is a move right and a clockwise turn an anticlockwise one; the rest keep their class.
        mirror_twins = [["MoveLeft", "MoveRight"], ["RotateCCW", "RotateCW"]]
        assert isinstance(saved["mirror_pairs"], list)
        assert all(a == b or sorted([a, b]) in mirror_twins for a, b in saved["mirror_pairs"]), saved["mirror_pairs"]
    else:
        assert saved["reverse_pairs"] == [["Grow", "Shrink"]]
        assert saved["mirror_pairs"] == [["MoveLeft", "MoveRight"], ["Grow", "Grow"]]
    keys = sorted((tmp_path / "cache" / "features").glob("*/key.json"))
    assert len(keys) == 4  # three train views and the val clips
    views = sorted(json.loads(k.read_text()).get("view", [None])[-1] or 0 for k in keys)
    assert views == [0, 0, 1, 2] and all(json.loads(k.read_text())["motion_map"] == 4 for k in keys)
    assert all(json.loads(k.read_text())["contrast_stage"] == 16 for k in keys)
    # Grid 1 keeps the key it always had (existing caches stay valid); grid 2 is a different entry.
    assert all(json.loads(k.read_text()).get("contrast_grid") == (grid if grid > 1 else None) for k in keys)
    assert len(sorted((tmp_path / "cache" / "features").glob("*/*.pt"))) == 3 * len(split.train) + len(split.test)
    from actionrec.build import model_from_checkpoint

    _, model, classes = model_from_checkpoint(Path(result["run_dir"]) / "last.pt")
    with torch.no_grad():
        assert model(torch.randn(2, 4, 3, 32, 32)).shape == (2, len(classes))


def test_train_tool_trains_the_heads_one_after_the_other_and_resumes_between_them(tiny_root, tmp_path, capsys):
    """model.heads=2 on the cache: train.epochs split between the heads, each with its own warmup and
    cosine; a run stopped after the first head's epochs resumes into the second, which leaves the first
    exactly as it was; the checkpoint averages both."""
    from tests.helpers import TWO_HEADS, load_tool

    train_tool = load_tool("train")
    overrides = [
        f"data.root={tiny_root}", f"data.cache_dir={tmp_path / 'cache'}", "data.clip_len=4", "data.resize_short=40",
        "data.crop_size=32", "data.num_workers=0", "model.backbone=test_resnet", "model.hidden_size=16", *TWO_HEADS,
        "train.batch_size=4", "train.val_every=1", "train.device=cpu", "train.cpu_threads=1",
        "logging.wandb.mode=disabled", f"train.output_dir={tmp_path / 'runs'}", "train.name=heads",
    ]
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), *overrides]
    run = Path(train_tool.main(train_tool.parse_args([*args, "--stop-after", "2"]))["run_dir"])
    first = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert int(first["model"]["active_head"]) == 0 and "head 1 of 2 trains in epochs 1-2" in capsys.readouterr().err
    train_tool.main(train_tool.parse_args([*args, "--resume", "auto"]))
    assert "head 2 of 2 trains in epochs 3-4" in capsys.readouterr().err
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert int(last["active_head"]) == 1
    mine = [k for k in last if k.startswith(("head.", "contrast."))]
    second = [k for k in last if k.startswith("more_heads.0.")]
    assert mine and len(second) == len(mine)
    assert all(torch.equal(last[k], first["model"][k]) for k in mine)  # the second head's epochs left the first alone
    assert not all(torch.equal(last[k], first["model"][k]) for k in second)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows]  # each row: the lr the next step takes
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert lrs[2] == pytest.approx(lrs[0]) and lrs[1] > 10 * lrs[3]  # the second head's warmup, then its cosine's end
    _, model, classes = build.model_from_checkpoint(run / "last.pt")
    head0 = create_model("cnn_lstm", num_classes=len(classes), backbone="test_resnet", hidden_size=16,
                         freeze_backbone=True, temporal="transformer", motion="only", motion_map=4, contrast=8).eval()
    head0.load_state_dict({k: v for k, v in last.items() if not k.startswith("more_heads.") and k != "active_head"})
    clips = torch.randn(3, 4, 3, 32, 32)
    with torch.no_grad():  # the checkpoint's model averages both heads, not the first alone
        both, alone = model.eval()(clips).exp(), head0(clips).softmax(-1)
    torch.testing.assert_close(both.sum(-1), torch.ones(3))
    assert not torch.allclose(both, alone, atol=1e-4)


def test_feature_dataset_of_head_inputs_gives_what_the_features_would_give():
    """Training on the cache replaces each view by the head's inputs (FeatureDataset.map_views with
    CNNLSTM.head_inputs); reversed and mirrored by reverse_inputs and mirror_inputs, every item, with its
    label, is the head inputs of the item the raw features give (the same draws)."""
    from actionrec.data.mirror import Mirror
    from actionrec.data.reversal import TimeReversal

    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=3, backbone="test_resnet", temporal="transformer", motion="only",
                         motion_map=4, motion_softmax=0.1, hidden_size=16, contrast=8, contrast_grid=2).eval()
    with torch.no_grad():
        feats = {f"v{i}": model.clip_features(torch.randn(2, 5, 3, 32, 32)) for i in range(12)}  # 2 views each

    class Cache:
        def __init__(self, view):
            self.view = view

        def get(self, path):
            return feats[path][self.view : self.view + 1]

    ds = type("DS", (), {"paths": list(feats), "labels": [i % 3 for i in range(12)]})()
    caches = [Cache(0), Cache(1)]
    raw = FeatureDataset(ds, caches, train=True, reversal=TimeReversal([(0, 1)], seed=3),
                         mirror=Mirror([(0, 0), (1, 2)], model.mirror_features, seed=3))
    inputs = FeatureDataset(ds, caches, train=True, reversal=TimeReversal([(0, 1)], seed=3, backwards=model.reverse_inputs),
                            mirror=Mirror([(0, 0), (1, 2)], model.mirror_inputs, seed=3))
    inputs.map_views(model.head_inputs)
    changed = 0
    for epoch in range(3):
        raw.set_epoch(epoch)
        inputs.set_epoch(epoch)
        for i in range(len(raw)):
            a, b = raw[i], inputs[i]
            assert a["label"] == b["label"] and a["index"] == b["index"]
            torch.testing.assert_close(b["clip"], model.head_inputs(a["clip"]), rtol=1e-5, atol=1e-6)
            changed += a["label"] != ds.labels[a["index"]]
    assert changed > 0  # some items were played backwards or mirrored into another class
    val = FeatureDataset(ds, caches[:1], train=False)
    val.map_views(model.head_inputs)
    torch.testing.assert_close(val[4]["clip"], model.head_inputs(feats["v4"][:1]))
