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
the scouts know) is never flipped. Mirroring commutes with playing backwards, so time-reversed twins
(an entry and an exit) look the same mirrored or neither does: their self scores are pooled.

Frames are flipped along their width; cached features are mirrored in feature space
(``CNNLSTM.mirror_features``), at no cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from actionrec.data.reversal import TimeReversal

# data.mirror_pairs=auto (mirror_labels): what the scouts must say of a class's mirrored clips: the
# class itself at least a quarter of the time, or mostly each other. On the real-footage sets measured
# a pan without its twin (a class whose mirror image is another class) scored 0.02-0.04 for itself,
# the classes that look the same mirrored 0.34-0.95, rare ones lowest; the self bar sits between the
# two (0.5 before left rare entries and exits unflipped: README, "A lower self bar").
MIRROR_SELF_SCORE = 0.25  # mean softmax for the class itself: flipped with its label kept
MIRROR_TWIN_SCORE = 0.5  # (P[a][b] + P[b][a]) / 2 for two classes: flipped with the labels swapped


def flip_frames(clip: torch.Tensor) -> torch.Tensor:
    """(..., H, W) frames flipped left-right."""
    return clip.flip(-1)


class Mirror(TimeReversal):
    """Flip a training clip left-right with probability ``prob`` and give it its mirror label
    (``TimeReversal`` with a flip in place of the reversal, and its own draws).

    Args:
        pairs: (class index, class index): a and b swap when flipped; (c, c): c is flipped with its
            label kept; classes in no pair are never flipped. Each class in one pair only.
        flip: the flip of one clip: ``flip_frames`` for (T, C, H, W) frames,
            ``CNNLSTM.mirror_features`` for (T, D) cached features.
        prob: chance that a clip of a class in a pair is flipped.
        seed: base seed; the draw for (epoch, item) is the same in every process and worker.
    """

    NAME, STREAM = "mirror", 0x3199

    def __init__(self, pairs: Sequence[tuple[int, int]], flip: Callable[[torch.Tensor], torch.Tensor],
                 prob: float = 0.5, seed: int = 0):
        super().__init__(pairs, prob, seed)
        self.flip = flip

    def transform(self, clip: torch.Tensor) -> torch.Tensor:
        return self.flip(clip)


def self_scores(said: torch.Tensor, counts: Sequence[int] | None = None,
                twins: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
    """(C,) how much each class looks like itself mirrored: P[a][a], pooled over time-reversed twins.

    A clip mirrored and played backwards is the same clip whichever is done first, so a class's
    time-reversed twin looks the same mirrored exactly when the class does (an exit mirrored is an
    exit when an entry mirrored is an entry). The scouts' score for a rare class is the noisier one,
    so each twin pair gets one score: the mean of P[a][a] and P[b][b] weighted by the classes'
    clip counts (``counts``; equal weights without them).
    """
    own = said.diagonal().clone()
    n = torch.ones_like(own) if counts is None else torch.as_tensor(list(counts), dtype=own.dtype)
    for a, b in twins:
        if a != b:
            own[a] = own[b] = (n[a] * said[a, a] + n[b] * said[b, b]) / (n[a] + n[b]).clamp_min(1)
    return own


def mirror_labels(said: torch.Tensor, *, itself: torch.Tensor | None = None, self_score: float = MIRROR_SELF_SCORE,
                  twin_score: float = MIRROR_TWIN_SCORE) -> list[tuple[int, int]]:
    """``data.mirror_pairs=auto``: the mirror pairs from the scouts' answers on mirrored clips.

    Args:
        said: (C, C) P[a][b], the scouts' mean softmax for b over class a's clips mirrored
            (the second answer of ``reversal.scout_scores`` with ``mirror``).
        itself: (C,) each class's self score, ``self_scores`` pooled over time-reversed twins;
            P[a][a] without it.

    Returns:
        ``Mirror``'s pairs, (a, b) with a <= b, sorted: (a, a) when ``itself[a]`` is at least
        ``self_score`` (flipped with its label kept); (a, b) for two classes that are not, when
        (P[a][b] + P[b][a]) / 2 >= ``twin_score`` (a maximum-weight matching: swapped); the rest are in
        no pair (never flipped).
    """
    import networkx as nx

    c, itself = said.shape[0], self_scores(said) if itself is None else itself
    own = {a for a in range(c) if float(itself[a]) >= self_score}
    graph = nx.Graph()
    graph.add_weighted_edges_from((a, b, float(said[a, b] + said[b, a]) / 2) for a in range(c) for b in range(a + 1, c)
                                  if a not in own and b not in own and float(said[a, b] + said[b, a]) / 2 >= twin_score)
    return sorted([(a, a) for a in own] + [(min(e), max(e)) for e in nx.max_weight_matching(graph)])


def mirror_report(flips: Sequence[tuple[int, int]], said: torch.Tensor, classes: Sequence[str], *,
                  itself: torch.Tensor | None = None) -> str:
    """One log line on ``data.mirror_pairs=auto``: the twins with their scores, how many classes are
    flipped as they are (their self scores' range and the lowest, nearest the bar), and the classes
    never flipped with what the scouts said of their mirror images (``itself``: the ``self_scores``
    decided on; P[a][a] without it)."""
    itself = self_scores(said) if itself is None else itself
    twins = [(a, b) for a, b in flips if a != b]
    text = ", ".join(f"{classes[a]}/{classes[b]} ({float(said[a, b] + said[b, a]) / 2:.2f})" for a, b in twins)
    text = text or "no mirror twins"
    own = {a: float(itself[a]) for a, b in flips if a == b}
    text += f"; {len(own)} of {len(classes)} classes flipped as they are"
    if own:  # the range, and the class(es) nearest the bar
        low = min(own.values())
        text += (f" (itself {low:.2f}-{max(own.values()):.2f}, lowest "
                 f"{', '.join(classes[a] for a, v in own.items() if v == low)})")
    flipped = {c for pair in flips for c in pair}
    alone = [f"{classes[a]} (itself {float(itself[a]):.2f})" for a in range(len(classes)) if a not in flipped]
    if alone:
        text += f"; never flipped: {', '.join(alone)} (if you know what their mirror images are, name them in data.mirror_pairs)"
    return text
