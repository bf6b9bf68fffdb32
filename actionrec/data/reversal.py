"""Time reversal with twin labels: a training clip played backwards is a clip of its twin class.

Many action sets hold classes that are each other's time reversal: an object appearing and one
vanishing, a camera zooming in and out, something rising and falling, a door opening and closing.
Played backwards, a clip of one is a clip of the other, so reversing it and swapping its label is
a label-correct augmentation (as a horizontal flip with swapped left/right labels is), and the
rarer member of such a pair trains on its twin's videos too. A class that looks the same either
way can be its own twin (``[C, C]``): its clips are then reversed without a label change.

``data.reverse_pairs`` names the twins; nothing is assumed from class names. Frames are
processed independently by the backbone, so reversing a clip's per-frame features is the same as
reversing its frames: the feature cache applies it to cached features at no cost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from actionrec.config import ConfigError

# data.reverse_pairs=auto: a pair scoring TWIN_SCORE or more is taken unless one of its classes has
# another pair scoring RIVAL_SCORE or more (find_reverse_pairs, pairs_from_scores).
TWIN_SCORE = 0.5
RIVAL_SCORE = 0.4


class TimeReversal:
    """Reverse a training clip along time with probability ``prob`` and give it its twin's label.

    Args:
        pairs: (class index, class index) twins; each class may appear in one pair only.
        prob: chance that a clip of a class with a twin is reversed.
        seed: base seed; the draw for (epoch, item) is the same in every process and worker.
    """

    def __init__(self, pairs: Sequence[tuple[int, int]], prob: float = 0.5, seed: int = 0):
        if not 0 <= prob <= 1:
            raise ValueError(f"reversal probability must be in [0, 1], got {prob}")
        self.twin: dict[int, int] = {}
        for a, b in pairs:
            for c in {a, b}:
                if c in self.twin:
                    raise ValueError(f"class {c} is in two reverse pairs")
            self.twin[a], self.twin[b] = b, a
        self.prob, self.seed = prob, seed

    def __call__(self, clip: torch.Tensor, label: int, epoch: int, index: int) -> tuple[torch.Tensor, int]:
        """``clip`` (T, ...) frames or per-frame features of item ``index`` in ``epoch`` -> the clip
        or the clip reversed along time, and the label that goes with it."""
        if label not in self.twin or self.prob == 0:
            return clip, label
        rng = np.random.default_rng([self.seed, 0x7E5E, epoch, index])
        if rng.random() >= self.prob:
            return clip, label
        return clip.flip(0), self.twin[label]

    def expected_counts(self, counts: Sequence[int]) -> list[float]:
        """Per-class training clips per epoch once reversal moves some to their twin (for
        ``loss.alpha=auto``): (1 - p) n_a + p n_b for twins a, b."""
        out = [float(n) for n in counts]
        for a, b in self.twin.items():
            if a != b:
                out[a] = (1 - self.prob) * counts[a] + self.prob * counts[b]
        return out


def reverse_pairs_to_indices(pairs: Sequence[Sequence[str]], class_names: Sequence[str]) -> list[tuple[int, int]]:
    """``data.reverse_pairs`` names -> class index pairs.

    Raises:
        ConfigError: a pair that is not two names, or a name that is not one of the dataset's classes.
    """
    index = {name: i for i, name in enumerate(class_names)}
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ConfigError(f"data.reverse_pairs: {list(pair)!r} is not a pair of two class names")
        for name in pair:
            if name not in index:
                raise ConfigError(f"data.reverse_pairs: class {name!r} is not in the dataset "
                                 f"(classes: {', '.join(class_names)})")
        out.append((index[pair[0]], index[pair[1]]))
    return out


def find_reverse_pairs(forward: torch.Tensor, backward: torch.Tensor, labels: Sequence[int], num_classes: int, *,
                       threshold: float = TWIN_SCORE, rival: float = RIVAL_SCORE, folds: int = 5, steps: int = 300,
                       seed: int = 0):
    """Which classes are each other's time reversal (``data.reverse_pairs=auto``), read off clip summaries.

    A linear probe learns 2C labels, "class a" and "class a played backwards", from order-aware
    summaries of the training clips (``CNNLSTM.order_summary``), class-balanced, and is scored on
    videos it did not see (``folds`` folds over videos). If a clip of a played backwards *is* a clip
    of b, the probe cannot tell "a backwards" from "b" and splits the clips of both labels between
    them in some proportion: S[a][b] = P(says b | a backwards) + P(says a backwards | b) is then
    about 1, against about 0 for classes it can tell apart (a two-sample test by classifier). The
    score of a pair is (S[a][b] + S[b][a]) / 2, and a pair is taken when its score is at least
    ``threshold`` (0.5: halfway between the two) and neither class has another pair scoring
    ``rival`` or more (ambiguous twins are left out). A class is never its own twin here: that
    would teach a class to ignore its own direction on a guess.

    Args:
        forward, backward: (N, V, S) summaries of N training videos' V views, played forwards and backwards.
        labels: the N videos' class indices.

    Returns:
        ([(a, b, score)] pairs found with a < b, best first; (C, C) score matrix).
    """
    n, v, _ = forward.shape
    if n < 2:  # nothing to hold out
        return [], torch.zeros(num_classes, num_classes, dtype=torch.float64)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    fold = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % max(2, min(folds, n))
    said = torch.zeros(2 * num_classes, 2 * num_classes, dtype=torch.float64)  # true label (a | C + a) x predicted
    for k in fold.unique().tolist():
        tr, te = fold != k, fold == k
        x = torch.cat([forward[tr], backward[tr]]).flatten(0, 1).float()
        t = torch.cat([y[tr], y[tr] + num_classes]).repeat_interleave(v)
        mean, std = x.mean(0), x.std(0) + 1e-6
        weight = 1.0 / torch.bincount(t, minlength=2 * num_classes).clamp_min(1).float()
        w = torch.zeros(2 * num_classes, x.shape[1], requires_grad=True)  # convex: zeros are a fine start
        bias = torch.zeros(2 * num_classes, requires_grad=True)
        opt = torch.optim.AdamW([w, bias], lr=1e-2, weight_decay=1e-2)
        xs = (x - mean) / std
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(xs @ w.T + bias, t, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            for feats, offset in ((forward[te], 0), (backward[te], num_classes)):
                pred = (((feats.flatten(0, 1).float() - mean) / std) @ w.T + bias).argmax(1)
                said.index_put_((y[te].repeat_interleave(v) + offset, pred), torch.ones(len(pred), dtype=torch.float64),
                                accumulate=True)
    p = said / said.sum(1, keepdim=True).clamp_min(1)
    c = num_classes
    s = p[c:, :c] + p[:c, c:].T  # s[a][b] = P(b | a backwards) + P(a backwards | b)
    score = (s + s.T) / 2
    return pairs_from_scores(score, threshold=threshold, rival=rival), score


def pairs_from_scores(score: torch.Tensor, *, threshold: float = TWIN_SCORE,
                      rival: float = RIVAL_SCORE) -> list[tuple[int, int, float]]:
    """Twins from a symmetric (C, C) pair score: (a, b, score) with a < b for every pair scoring
    ``threshold`` or more whose classes have no other pair scoring ``rival`` or more, best first.

    A class with a second near-twin (an object appearing, played backwards, is close to one leaving
    the frame as well as to one vanishing) gets no twin: a wrong twin teaches the wrong label.
    """
    c = score.shape[0]
    near = Counter(x for a in range(c) for b in range(a + 1, c) if score[a, b] >= rival for x in (a, b))
    pairs = [(a, b, float(score[a, b])) for a in range(c) for b in range(a + 1, c)
             if score[a, b] >= threshold and near[a] == near[b] == 1]
    return sorted(pairs, key=lambda p: -p[2])


def twin_report(found: Sequence[tuple[int, int, float]], score: torch.Tensor, classes: Sequence[str]) -> str:
    """One log line on ``find_reverse_pairs``' result: the pairs found with their scores, then the
    pairs left out as ambiguous (scoring ``TWIN_SCORE`` or more, but a class has a rival), with what
    to do about them, or else the highest other pair against the threshold."""
    chosen, n = {(a, b) for a, b, _ in found}, len(classes)
    others = sorted(((float(score[a, b]), a, b) for a in range(n) for b in range(a + 1, n) if (a, b) not in chosen),
                    reverse=True)
    text = ", ".join(f"{classes[a]}/{classes[b]} ({s:.2f})" for a, b, s in found) or "no time-reversed twins"
    ambiguous = [f"{classes[a]}/{classes[b]} ({s:.2f})" for s, a, b in others if s >= TWIN_SCORE]
    if ambiguous:
        # README: naming the twins by hand added 0.01-0.07 at 3x3 on the five sets where these were left out.
        text += (f"; left out, a class with a rival pair scoring {RIVAL_SCORE:.2f} or more: {', '.join(ambiguous)}"
                 " (if you know which of these are twins, name them in data.reverse_pairs)")
    elif others:
        s, a, b = others[0]
        text += f"; highest other pair {classes[a]}/{classes[b]} ({s:.2f}, threshold {TWIN_SCORE:.2f})"
    return text
