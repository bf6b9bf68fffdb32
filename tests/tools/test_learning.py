"""Proof that the system learns: the quickstart recipe on the built-in synthetic dataset.

Two runs of tools/train.py (10 epochs each) on the default synthetic dataset, generated into a temp
cache: the BiLSTM model and the frame-averaging baseline (model.temporal=none). On the classes that
only temporal order separates (MoveLeft/MoveRight, Grow/Shrink, RotateCW/RotateCCW; each member is
the other's frames reversed) the baseline must stay at chance within each pair while the BiLSTM
does not, and the BiLSTM must be far above chance overall.

The issue's target of >= 90 % top-1 is NOT reached within this CPU budget (see README, "Does it
learn?"); the thresholds below are what 10 CPU epochs reliably give, with margin.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from actionrec.data.synthetic import TEMPORAL_PAIRS
from tests.helpers import REPO

pytestmark = pytest.mark.slow


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
              f"train.output_dir={out / 'runs'}", "logging.wandb.mode=disabled", "train.epochs=10",
              "train.cpu_threads=2"]  # the thread count the thresholds were measured with
    results = {}
    for name, extra in (("bilstm", []), ("baseline", ["model.temporal=none"])):
        train_tool.main(train_tool.parse_args([*common, f"train.name={name}", *extra]))
        ckpt = out / "runs" / name / "best.pt"
        eval_tool.main(eval_tool.parse_args([str(ckpt), "eval.num_clips=1", "--out", str(out / name)]))
        results[name] = json.loads((out / name / "metrics.json").read_text())
    (out / "summary.json").write_text(json.dumps({k: {"top1": v["top1"], "pair_acc": pair_accuracy(v)} for k, v in results.items()}))
    print({k: {"top1": v["top1"], "pair_acc": pair_accuracy(v)} for k, v in results.items()})
    return results


def test_quickstart_bilstm_learns(runs):
    # chance is 1/8; measured 0.60 after 10 CPU epochs
    assert runs["bilstm"]["top1"] >= 0.40, runs["bilstm"]["per_class_acc"]
    assert runs["bilstm"]["top5"] >= 0.85


def test_temporal_order_needs_the_lstm(runs):
    lstm, base = runs["bilstm"], runs["baseline"]
    # Reversed twins share their group, so both are in the test split, and the baseline sees
    # (nearly) the same frames for both: it gives both twins the same member, so its accuracy
    # within each pair stays at 0.5 however long it trains.
    for pair in TEMPORAL_PAIRS:
        assert pair_accuracy(base, [pair]) <= 0.70, f"baseline separates reversed videos of {pair}"
    # Within 10 CPU epochs the BiLSTM separates at least one pair (measured: Grow/Shrink 21 of 21, baseline 6 of 10);
    # MoveLeft/MoveRight and the rotations need longer training (README, "Does it learn?").
    best_pair = max(pair_accuracy(lstm, [pair]) for pair in TEMPORAL_PAIRS)
    assert best_pair >= 0.80, f"BiLSTM best pair accuracy {best_pair:.3f}"
    assert pair_accuracy(lstm) >= pair_accuracy(base) + 0.08
