"""Classification metrics over per-video scores: top-k, mean class accuracy, confusion matrix, mistakes;
the training history row and console table of an epoch."""

from __future__ import annotations

import numpy as np
import torch


def pool_views(logits: torch.Tensor, num_views: int) -> torch.Tensor:
    """(B*V, K) logits of V views per video -> (B, K) mean softmax per video."""
    probs = torch.softmax(logits.float(), dim=-1)
    return probs.view(-1, num_views, probs.shape[-1]).mean(1)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is in the top-k scores, for each k (k capped at #classes)."""
    out = {}
    maxk = min(max(ks), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices  # (B, maxk)
    hits = top == labels[:, None]
    for k in ks:
        out[k] = int(hits[:, : min(k, maxk)].any(1).sum())
    return out


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def classification_report(scores: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Top-1/top-5, mean class accuracy, per-class accuracy and confusion matrix.

    Args:
        scores: (N, K) per-video class scores (probabilities), one row per video.
        labels: (N,) true classes.
        class_names: K names.

    Returns:
        dict with ``top1``, ``top5``, ``mean_class_acc`` (fractions in [0, 1]), ``per_class_acc``
        (name -> accuracy, NaN-free: classes with no videos are left out), ``confusion`` (list of
        lists) and ``num_videos``.
    """
    k = len(class_names)
    n = len(labels)
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "mean_class_acc": 0.0, "per_class_acc": {}, "confusion": [], "num_videos": 0}
    s = torch.as_tensor(scores)
    y = torch.as_tensor(labels, dtype=torch.long)
    hits = topk_correct(s, y, (1, 5))
    preds = s.argmax(1).numpy()
    cm = confusion_matrix(np.asarray(labels), preds, k)
    support = cm.sum(1)
    per_class = {class_names[i]: float(cm[i, i] / support[i]) for i in range(k) if support[i] > 0}
    return {
        "top1": hits[1] / n,
        "top5": hits[5] / n,
        "mean_class_acc": float(np.mean(list(per_class.values()))) if per_class else 0.0,
        "per_class_acc": per_class,
        "confusion": cm.tolist(),
        "num_videos": n,
    }


def format_per_class(per_class_acc: dict[str, float], limit: int = 20) -> str:
    """One line of per-class accuracies: ``"PanLeft 0.92 | PanRight 0.75"``, in class order.

    Past ``limit`` classes (UCF101 has 101) only the ``limit`` lowest are shown, lowest first,
    so the line stays readable and names the classes that need attention.
    """
    items = list(per_class_acc.items())
    head = ""
    if len(items) > limit:
        items = sorted(items, key=lambda kv: kv[1])[:limit]
        head = f"{limit} lowest of {len(per_class_acc)}: "
    return head + " | ".join(f"{name} {acc:.2f}" for name, acc in items)


def confident_mistakes(scores: np.ndarray, labels: np.ndarray, num: int) -> list[tuple[int, int, float]]:
    """The ``num`` wrong predictions with the highest predicted-class score, most confident first.

    Args:
        scores: (N, K) per-video class scores; labels: (N,) true classes.

    Returns:
        (row, predicted class, its score) triples; ties keep row order.
    """
    scores = np.asarray(scores)
    if not len(scores):
        return []
    preds = scores.argmax(1)
    conf = scores[np.arange(len(preds)), preds]
    wrong = np.flatnonzero(preds != np.asarray(labels))
    order = wrong[np.argsort(-conf[wrong], kind="stable")][:num]
    return [(int(r), int(preds[r]), float(conf[r])) for r in order]


EPOCH_HEADER = (f"{'epoch':>5} {'loss':>7} {'acc':>6} {'val_loss':>8} {'top1':>6} {'top5':>6} {'mca':>6} {'lr':>9} "
                f"{'clips/s':>7} {'time':>6} {'bad':>4}")


def epoch_row(epoch: int, tr: dict) -> dict:
    """The history row of 0-based ``epoch`` from ``train_one_epoch``'s result ``tr`` (validation adds val_*)."""
    return {"epoch": epoch + 1, "step": tr["step"], "train_loss": tr["loss"], "train_acc": tr["acc"], "lr": tr["lr"],
            "clips_per_s": tr["clips_per_s"], "data_wait_frac": tr["data_wait_frac"], "time_s": tr["time_s"],
            "skipped_nonfinite": tr["skipped_nonfinite"]}


def val_columns(val: dict) -> dict:
    """The history row's validation part from ``evaluate``'s report: val_* and val/acc/<class>."""
    return {**{f"val_{k}": val[k] for k in ("loss", "top1", "top5", "mean_class_acc")},
            **{f"val/acc/{c}": a for c, a in val["per_class_acc"].items()}}


def epoch_line(row: dict, tr: dict, per_class: dict | None = None) -> str:
    """``row`` as a line of the ``EPOCH_HEADER`` table ('-' for the validation columns of an epoch without),
    and under it the ``per_class`` accuracies when given."""

    def v(k: str) -> str:
        return f"{row[k]:.3f}" if k in row else "-"

    return (f"{row['epoch']:>5} {tr['loss']:>7.4f} {tr['acc']:>6.3f} {v('val_loss'):>8} {v('val_top1'):>6} "
            f"{v('val_top5'):>6} {v('val_mean_class_acc'):>6} {tr['lr']:>9.2e} {tr['clips_per_s']:>7.1f} "
            f"{tr['time_s']:>5.0f}s {row['bad_videos']:>4}"
            + (f"\n{'':8}per-class: {format_per_class(per_class)}" if per_class is not None else ""))
