"""PNG plots (matplotlib, no display): loss/accuracy curves, confusion matrix, mistakes gallery, explanations."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Train/val loss and accuracy per epoch from the metrics history rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ep = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(ep, [r.get("train_loss") for r in history], "o-", label="train")
    val = [(r["epoch"], r["val_loss"]) for r in history if r.get("val_loss") is not None]
    if val:
        ax1.plot(*zip(*val), "s-", label="val")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(ep, [r.get("train_acc") for r in history], "o-", label="train top-1 (augmented)")
    for key, label in (("val_top1", "val top-1"), ("val_mean_class_acc", "val mean class acc")):
        pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
        if pts:
            ax2.plot(*zip(*pts), "s-", label=label)
    ax2.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(confusion: list[list[int]] | np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts; rows are true classes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cm = np.asarray(confusion, dtype=np.float64)
    k = len(class_names)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(5.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _printable(text: str) -> str:
    """Text the font renderer takes: a non-UTF-8 file name (surrogate escapes) gets U+FFFD instead."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def class_colours(num_classes: int) -> np.ndarray:
    """(K, 4) RGBA, one fixed colour per class index (tab10 up to 10 classes, tab20 up to 20, then hsv)."""
    if num_classes <= 20:
        return plt.get_cmap("tab10" if num_classes <= 10 else "tab20")(np.arange(num_classes))
    return plt.get_cmap("hsv")(np.arange(num_classes) / num_classes)


def plot_gradcam_grid(
    frames: np.ndarray,
    overlays: np.ndarray,
    frame_indices: list[int],
    path: str | Path,
    *,
    title: str,
    attention: np.ndarray | None = None,
    columns: int = 8,
) -> Path:
    """Sampled frames (top row), their Grad-CAM overlays (below) and attention weights as bars (bottom).

    Args:
        frames, overlays: (T, H, W, 3) RGB uint8.
        frame_indices: the T source frame indices (shown above each frame).
        title: figure title.
        attention: (T,) attention-pooling weights, or None (no bar row).
        columns: frames per row block; longer clips wrap into several blocks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = len(frames)
    cols = min(columns, t)
    blocks = -(-t // cols)
    ratios = [1.0, 1.0] + ([0.6] if attention is not None else [])
    fig = plt.figure(figsize=(1.7 * cols + 0.8, blocks * 1.75 * sum(ratios) + 0.7))
    gs = fig.add_gridspec(blocks * len(ratios), cols, height_ratios=ratios * blocks, hspace=0.35, wspace=0.05)
    for b in range(blocks):
        r0 = b * len(ratios)
        span = range(b * cols, min(t, (b + 1) * cols))
        for j, i in enumerate(span):
            for row, (img, label) in enumerate(((frames[i], f"frame {frame_indices[i]}"), (overlays[i], ""))):
                ax = fig.add_subplot(gs[r0 + row, j])
                ax.imshow(img)
                ax.set_xticks([])
                ax.set_yticks([])
                if label:
                    ax.set_title(label, fontsize=9)
                if j == 0:
                    ax.set_ylabel("frame" if row == 0 else "Grad-CAM", fontsize=9)
        if attention is not None:
            ax = fig.add_subplot(gs[r0 + 2, :])
            w = np.asarray(attention, np.float64)
            xs = np.arange(len(span))
            ax.bar(xs, w[list(span)], width=0.6, color=plt.get_cmap("viridis")(w[list(span)] / max(w.max(), 1e-12)))
            ax.axhline(1.0 / t, color="grey", lw=0.8, ls="--", label=f"uniform 1/{t}")
            for x, v in zip(xs, w[list(span)]):
                ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
            ax.set_xlim(-0.5, cols - 0.5)
            ax.set_ylim(0, w.max() * 1.3 + 1e-9)
            ax.set_xticks(xs, [str(frame_indices[i]) for i in span], fontsize=8)
            ax.set_ylabel("attention", fontsize=9)
            if b == 0:
                ax.legend(fontsize=7, loc="upper right", frameon=False)
    fig.suptitle(_printable(title), fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_timeline(
    frames: np.ndarray,
    probs: np.ndarray,
    top_per_frame: np.ndarray,
    class_names: list[str],
    path: str | Path,
    *,
    fps: float = 0.0,
    title: str = "",
    highlight: int | None = None,
    max_classes: int = 8,
) -> Path:
    """Class probabilities over a video (lines) and the top label per frame (coloured bands).

    Args:
        frames: (P,) frame index of each prediction; probs: (P, K) its probabilities.
        top_per_frame: (N,) class shown at each of the N frames of the video, -1 before the first prediction.
        class_names: the K names.
        fps: the video's frame rate; adds a time axis in seconds when > 0.
        title: figure title.
        highlight: a class drawn thicker (the one explained).
        max_classes: lines drawn: classes that are ever on top, then the highest peaks, at most this many.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k, n = len(class_names), len(top_per_frame)
    colours = class_colours(k)
    fig, (ax, bands) = plt.subplots(2, 1, figsize=(11, 4.6), sharex=True,
                                    gridspec_kw={"height_ratios": [4, 1], "hspace": 0.08})
    shown = []
    if len(probs):
        ever_top = [int(c) for c in np.unique(top_per_frame) if c >= 0]
        by_peak = [int(c) for c in np.argsort(-probs.max(0), kind="stable")]
        for c in ([highlight] if highlight is not None else []) + ever_top + by_peak:
            if c not in shown and len(shown) < max_classes:
                shown.append(c)
        for c in sorted(shown):
            ax.plot(frames, probs[:, c], "-", drawstyle="steps-post", color=colours[c],
                    label=_printable(class_names[c]), lw=2.6 if c == highlight else 1.4)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    else:
        ax.text(0.5, 0.5, "no prediction: the video is shorter than the first window", ha="center",
                transform=ax.transAxes)
    ax.set(ylabel="probability", ylim=(0, 1.02), xlim=(0, max(n, 1)), title=_printable(title))
    ax.grid(alpha=0.3)
    start = 0
    for f in range(1, n + 1):  # runs of the same top class
        if f == n or top_per_frame[f] != top_per_frame[start]:
            c = int(top_per_frame[start])
            colour = colours[c] if c >= 0 else (0.85, 0.85, 0.85, 1.0)
            bands.broken_barh([(start, f - start)], (0, 1), facecolors=[colour], hatch="//" if c < 0 else None)
            if f - start >= 0.07 * n:
                name = _printable(class_names[c]) if c >= 0 else "warm-up"
                bands.text((start + f) / 2, 0.5, name, ha="center", va="center", fontsize=8, clip_on=True)
            start = f
    bands.set(yticks=[], xlabel="frame", ylim=(0, 1))
    bands.set_ylabel("top", rotation=0, ha="right", va="center", fontsize=9)
    if fps > 0:
        sec = ax.secondary_xaxis("top", functions=(lambda x: x / fps, lambda s: s * fps))
        sec.set_xlabel("seconds", fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_mistakes(strips: list[np.ndarray], captions: list[str], path: str | Path, *, title: str = "") -> Path:
    """One row per mistake: its frames side by side (RGB uint8 (T, H, W, 3)) under a caption."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = max(1, len(strips))
    t = max((len(s) for s in strips), default=1)
    fig, axes = plt.subplots(rows, 1, figsize=(max(6.0, 1.3 * t), 1.7 * rows + 0.6), squeeze=False)
    for ax, strip, caption in zip(axes[:, 0], strips, captions):
        gap = np.full((strip.shape[1], max(2, strip.shape[2] // 16), 3), 255, np.uint8)
        ax.imshow(np.concatenate([x for f in strip for x in (f, gap)][:-1], axis=1))
        ax.set_title(_printable(caption), fontsize=9, loc="left")
        ax.axis("off")
    if not strips:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
        axes[0, 0].axis("off")
    fig.suptitle(_printable(title or "most confident mistakes"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
