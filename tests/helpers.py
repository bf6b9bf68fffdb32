"""Helpers shared by tests: repo paths, loading tools/*.py as modules, tiny training overrides."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_module(name: str, path: Path):
    """Import the file ``path`` as module ``name`` (scripts and test helpers are not in a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    return load_module(f"actionrec_tool_{name}", REPO / "tools" / f"{name}.py")


# model.heads=2 on the feature cache, small: two heads of 2 epochs each, a motion and contrast head
# that reads the cache's views (the train tool's tests on the CPU and on CUDA).
TWO_HEADS = ("model.freeze_backbone=true", "model.temporal=transformer", "model.motion=only", "model.motion_map=4",
             "model.contrast=8", "model.heads=2", "data.hflip=false", "train.cache_features=true",
             "train.cache_views=2", "train.epochs=4", "optim.warmup_epochs=1")


def tiny_overrides(root: Path, out_dir: Path) -> list[str]:
    """Overrides that make tools/train.py run in seconds on the ``tiny_dataset`` fixture."""
    return [
        f"data.root={root}",
        f"train.output_dir={out_dir}",
        "data.clip_len=4",
        "data.resize_short=40",
        "data.crop_size=32",
        "data.num_workers=0",
        "model.backbone=test_resnet",
        "model.hidden_size=16",
        "train.batch_size=4",
        "train.epochs=1",
        "train.device=cpu",
        # The automatic count follows machine load; runs compared weight for weight (resume) need the same.
        "train.cpu_threads=1",
        "eval.batch_size=4",
        "logging.wandb.mode=disabled",
    ]


def long_functions(limit: int = 80, folders: tuple[str, ...] = ("actionrec", "tools", "data_prep")) -> dict[str, int]:
    """``"path:function": lines`` for every function (or method) of more than ``limit`` lines under ``folders``."""
    import ast

    found = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        found[f"{path.relative_to(REPO).as_posix()}:{node.name}"] = lines
    return found


def in_memory_feature_datasets(num_videos: int = 40, num_classes: int = 3, **augment):
    """A train and a val ``FeatureDataset`` over random cached features held in memory (a stand-in
    cache: ``FeatureDataset`` only calls ``.get``), video i of class i % ``num_classes``; ``augment``
    (``reversal=``, ``mirror=``) is passed to both. Returns (train, val, {path: (1, 5, 4) features}, labels)."""
    import torch

    from actionrec.engine.feature_cache import FeatureDataset

    class Cache:
        def get(self, path):
            return feats[path]

    feats = {f"v{i}": torch.randn(1, 5, 4) for i in range(num_videos)}  # (views, T, D) per video
    labels = [i % num_classes for i in range(num_videos)]
    ds = type("DS", (), {"paths": list(feats), "labels": labels})()
    return (FeatureDataset(ds, [Cache()], train=True, **augment), FeatureDataset(ds, [Cache()], train=False, **augment),
            feats, labels)


def count_swapped_items(samples, change, **augment) -> int:
    """Train items of ``samples`` (64x48 videos) read without and with ``augment`` (``reversal=`` or
    ``mirror=``) on the same random draws: an item whose label the augmentation changed must hold exactly
    ``change``(the plain clip) and have swapped classes 0 and 1, every other item the plain clip.
    Returns how many changed."""
    import torch

    from actionrec.data.dataset import ClipSampling, VideoClipDataset
    from actionrec.data.transforms import train_transform

    def make(**kw):
        return VideoClipDataset(samples, sampling=ClipSampling(clip_len=6), train=True, seed=3, **kw,
                                transforms=[train_transform(resize_short=40, crop_size=32, mean=(0.5, 0.5, 0.5),
                                                            std=(0.25, 0.25, 0.25), hflip=False)])

    plain, augmented = make(), make(**augment)
    changed = 0
    for i in range(len(samples)):
        a, b = plain[i], augmented[i]
        if b["label"] != a["label"]:
            assert {a["label"], b["label"]} == {0, 1}
            torch.testing.assert_close(b["clip"], change(a["clip"]), rtol=0, atol=0)  # same crop, jitter, occlusion
            changed += 1
        else:
            torch.testing.assert_close(b["clip"], a["clip"], rtol=0, atol=0)
    return changed
