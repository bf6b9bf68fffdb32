"""Left-right mirroring with twin labels: a training clip flipped horizontally, under the label its
mirror image has.

A horizontal flip is the standard augmentation of action recognition, but it changes the class of
a pan to the left (now a pan to the right), of "pushing something from left to right", of a
"turn left". MMAction2's ``Flip`` takes a ``flip_label_map`` for that. Here ``data.mirror_pairs``
names the classes that are flipped and what they become: ``[PanLeft, PanRight]`` swap,
``[Jump, Jump]`` keeps its label, a class not named is never flipped (as ``data.reverse_pairs``
does for time). ``data.mirror_pairs=auto`` measures it instead (``mirror_labels``): a class whose
mirrored clips the scout heads still call that class is flipped as it is; two classes whose mirrored
clips the scouts call each other swap; a class that is neither (its mirror image looks like nothing
the scouts know) is never flipped.

Frames are flipped along their width; cached features are mirrored in feature space
(``CNNLSTM.mirror_features``), at no cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

# data.mirror_pairs=auto (mirror_labels): what the scouts must say of a class's mirrored clips: mostly
# the class itself, or mostly each other. Set, not tuned; on ten real-footage sets a pan without its
# twin scored 0.02-0.04 for itself, the twins 0.73-0.95, the other classes 0.34-0.95 (README).
MIRROR_SELF_SCORE = 0.5  # mean softmax for the class itself: flipped with its label kept
MIRROR_TWIN_SCORE = 0.5  # (P[a][b] + P[b][a]) / 2 for two classes: flipped with the labels swapped


def flip_frames(clip: torch.Tensor) -> torch.Tensor:
    """(..., H, W) frames flipped left-right."""
    return clip.flip(-1)


class Mirror:
    """Flip a training clip left-right with probability ``prob`` and give it its mirror label.

    Args:
        label_map: class index -> the class of its mirror image (itself, or its twin); classes
            not in it are never flipped.
        flip: the flip of one clip: ``flip_frames`` for (T, C, H, W) frames,
            ``CNNLSTM.mirror_features`` for (T, D) cached features.
        prob: chance that a clip of a class in ``label_map`` is flipped.
        seed: base seed; the draw for (epoch, item) is the same in every process and worker.
    """

    def __init__(self, label_map: dict[int, int], flip: Callable[[torch.Tensor], torch.Tensor], prob: float = 0.5,
                 seed: int = 0):
        if not 0 <= prob <= 1:
            raise ValueError(f"mirror probability must be in [0, 1], got {prob}")
        for a, b in label_map.items():
            if label_map.get(b) != a:
                raise ValueError(f"mirror labels must be pairs or classes of their own: {a} -> {b} but {b} -> "
                                 f"{label_map.get(b)}")
        self.label_map, self.flip, self.prob, self.seed = dict(label_map), flip, prob, seed

    def __call__(self, clip: torch.Tensor, label: int, epoch: int, index: int) -> tuple[torch.Tensor, int]:
        if label not in self.label_map or self.prob == 0:
            return clip, label
        rng = np.random.default_rng([self.seed, 0x3199, epoch, index])
        if rng.random() >= self.prob:
            return clip, label
        return self.flip(clip), self.label_map[label]

    def expected_counts(self, counts: Sequence[float]) -> list[float]:
        """Per-class training clips per epoch once flips move some to their twin: (1 - p) n_a + p n_b."""
        out = [float(n) for n in counts]
        for a, b in self.label_map.items():
            if a != b:
                out[a] = (1 - self.prob) * counts[a] + self.prob * counts[b]
        return out


def mirror_label_map(pairs: Sequence[tuple[int, int]]) -> dict[int, int]:
    """Class index pairs -> ``Mirror``'s label map: a and b swap; (c, c) keeps c's label."""
    out: dict[int, int] = {}
    for a, b in pairs:
        out[a], out[b] = b, a
    return out


def mirror_labels(said: torch.Tensor, *, self_score: float = MIRROR_SELF_SCORE,
                  twin_score: float = MIRROR_TWIN_SCORE) -> tuple[dict[int, int], list[tuple[int, int, float]]]:
    """``data.mirror_pairs=auto``: the mirror labels from the scouts' answers on mirrored clips.

    Args:
        said: (C, C) P[a][b], the scouts' mean softmax for b over class a's clips mirrored
            (the second answer of ``reversal.scout_scores`` with ``mirror``).

    Returns:
        (label map for ``Mirror``, twins as (a, b, score) with a < b). A class keeps its label when
        P[a][a] >= ``self_score``; two classes that do not are twins when (P[a][b] + P[b][a]) / 2 >=
        ``twin_score`` (a maximum-weight matching); the rest are not flipped.
    """
    import networkx as nx

    c = said.shape[0]
    own = {a for a in range(c) if float(said[a, a]) >= self_score}
    graph = nx.Graph()
    graph.add_weighted_edges_from((a, b, float(said[a, b] + said[b, a]) / 2) for a in range(c) for b in range(a + 1, c)
                                  if a not in own and b not in own and float(said[a, b] + said[b, a]) / 2 >= twin_score)
    twins = sorted(((min(e), max(e), graph.edges[e]["weight"]) for e in nx.max_weight_matching(graph)),
                   key=lambda p: (-p[2], p[0]))
    label_map = {a: a for a in own}
    for a, b, _ in twins:
        label_map[a], label_map[b] = b, a
    return label_map, twins


def mirror_report(flips: Sequence[tuple[int, int]], said: torch.Tensor, classes: Sequence[str]) -> str:
    """One log line on ``data.mirror_pairs=auto``: the twins with their scores, how many classes are
    flipped as they are, and the classes never flipped with what the scouts said of their mirror images."""
    twins = [(a, b) for a, b in flips if a != b]
    text = ", ".join(f"{classes[a]}/{classes[b]} ({float(said[a, b] + said[b, a]) / 2:.2f})" for a, b in twins)
    text = text or "no mirror twins"
    own = [float(said[a, a]) for a, b in flips if a == b]
    text += f"; {len(own)} of {len(classes)} classes flipped as they are"
    if own:
        text += f" (itself {min(own):.2f}-{max(own):.2f})"
    flipped = {c for pair in flips for c in pair}
    alone = [f"{classes[a]} (itself {float(said[a, a]):.2f})" for a in range(len(classes)) if a not in flipped]
    if alone:
        text += f"; never flipped: {', '.join(alone)} (if you know what their mirror images are, name them in data.mirror_pairs)"
    return text
