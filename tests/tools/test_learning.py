"""Proof that the system learns: the quickstart recipe on the built-in synthetic dataset.

Two runs of tools/train.py on the default synthetic dataset, generated into a temp cache: the
quickstart BiLSTM model for its full schedule (configs/quickstart.yaml), and the frame-averaging
baseline (model.temporal=none), which needs fewer epochs to reach its ceiling. Both are evaluated
with tools/eval.py on the test split (1 clip per video, as in validation during training), from the
LAST checkpoint, so no epoch is picked by its score on the very videos it is judged on.

On the classes that only temporal order separates (MoveLeft/MoveRight, Grow/Shrink,
RotateCW/RotateCCW; each member is the other's frames reversed) the baseline must stay at chance
within each pair while the BiLSTM separates every pair, and the BiLSTM must reach the issue's
target of >= 90 % top-1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from actionrec.data.synthetic import TEMPORAL_PAIRS
from tests.helpers import REPO

pytestmark = pytest.mark.slow

BASELINE_EPOCHS = 12


def pair_accuracy(metrics: dict, pairs=TEMPORAL_PAIRS) -> float:
    """Accuracy on temporal-pair classes, counting only the choice between the two members."""
    names = metrics["class_names"]
    cm = np.asarray(metrics["confusion"])
    right = total = 0
    for a, b in pairs:
        i, j = names.index(a), names.index(b)
        right += cm[i, i] + cm[j, j]
        total += cm[i, i] + cm[i, j] + cm[j, j] + cm[j, i]
    return right / max(total, 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train_tool):
    from tests.helpers import load_tool

    eval_tool = load_tool("eval")
    out = tmp_path_factory.mktemp("learning")
    common = ["--config", str(REPO / "configs" / "quickstart.yaml"), f"data.cache_dir={out / 'cache'}",
              f"train.output_dir={out / 'runs'}", "logging.wandb.mode=disabled",
              # What the default (cores minus loader workers) gives on the 2-core CI machine, pinned so
              # that the run is the same on any machine; the README's numbers were measured with it.
              "train.cpu_threads=1"]
    results = {}
    for name, extra in (("bilstm", []), ("baseline", ["model.temporal=none", f"train.epochs={BASELINE_EPOCHS}"])):
        train_tool.main(train_tool.parse_args([*common, f"train.name={name}", *extra]))
        ckpt = out / "runs" / name / "last.pt"
        eval_tool.main(eval_tool.parse_args([str(ckpt), "eval.num_clips=1", "--out", str(out / name)]))
        results[name] = json.loads((out / name / "metrics.json").read_text())
    summary = {k: {"top1": v["top1"], "top5": v["top5"], "pair_acc": pair_accuracy(v),
                   "pairs": {f"{a}/{b}": pair_accuracy(v, [(a, b)]) for a, b in TEMPORAL_PAIRS}}
               for k, v in results.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return results


def test_quickstart_bilstm_reaches_90_percent(runs):
    lstm = runs["bilstm"]
    assert lstm["num_videos"] >= 100  # the default synthetic test split: 8 classes x 3 groups x 6 clips
    assert lstm["top1"] >= 0.90, lstm["per_class_acc"]
    assert lstm["top5"] >= 0.98


def test_temporal_order_needs_the_lstm(runs):
    lstm, base = runs["bilstm"], runs["baseline"]
    # Reversed twins share their group, so both are in the test split, and the baseline sees
    # the same frames for both: it cannot do better than chance within a pair however long it
    # trains, and so not better than about 5/8 overall.
    for pair in TEMPORAL_PAIRS:
        assert pair_accuracy(base, [pair]) <= 0.70, f"baseline separates reversed videos of {pair}"
        assert pair_accuracy(lstm, [pair]) >= 0.80, f"BiLSTM does not separate {pair}"
    assert base["top1"] <= 0.72
    # The baseline does learn what it can: the appearance classes are not temporal.
    for cls in ("BlinkingStripes", "Checkerboard"):
        assert base["per_class_acc"][cls] >= 0.6, base["per_class_acc"]
