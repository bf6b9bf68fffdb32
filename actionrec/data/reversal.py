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

from collections.abc import Callable, Sequence

import numpy as np
import torch

from actionrec.config import ConfigError

# data.reverse_pairs=auto (find_twins_from in build.py): the probe's pair scores link classes
# scoring RELATED_SCORE or more into groups; a group is searched for twins when one of its pairs
# scores SUSPECT_SCORE or more (twin_groups); inside it the scout head pairs the classes, each pair
# of its best matching needing SCOUT_SCORE or more and beating the best pairing without it by
# TWIN_MARGIN (match_twins).
# Measured on 70 class sets (docs/real_footage.md).
RELATED_SCORE = 0.15
SUSPECT_SCORE = 0.4
SCOUT_SCORE = 0.35
TWIN_MARGIN = 0.05  # a pair must beat the best matching without it by this much (match_twins)
SCOUT_EPOCHS = 40
SCOUTS = 3


class TimeReversal:
    """Reverse a training clip along time with probability ``prob`` and give it its twin's label.

    Args:
        pairs: (class index, class index) twins; each class may appear in one pair only.
        prob: chance that a clip of a class with a twin is reversed.
        seed: base seed; the draw for (epoch, item) is the same in every process and worker.
        backwards: plays one (T, ...) clip backwards: a flip along time for frames and features,
            ``CNNLSTM.reverse_inputs`` for the head inputs of the feature cache.

    ``data.mirror.Mirror`` is the same with a left-right flip for the reversal (``transform``) and
    draws of its own (``STREAM``).
    """

    NAME, STREAM = "reverse", 0x7E5E  # what the pairs are called in errors; the draws' stream

    def __init__(self, pairs: Sequence[tuple[int, int]], prob: float = 0.5, seed: int = 0,
                 backwards: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if not 0 <= prob <= 1:
            raise ValueError(f"{self.NAME} probability must be in [0, 1], got {prob}")
        self.twin: dict[int, int] = {}
        for a, b in pairs:
            for c in {a, b}:
                if c in self.twin:
                    raise ValueError(f"class {c} is in two {self.NAME} pairs")
            self.twin[a], self.twin[b] = b, a
        self.prob, self.seed = prob, seed
        self.backwards = backwards

    def transform(self, clip: torch.Tensor) -> torch.Tensor:
        return clip.flip(0) if self.backwards is None else self.backwards(clip)

    def __call__(self, clip: torch.Tensor, label: int, epoch: int, index: int) -> tuple[torch.Tensor, int]:
        """``clip`` (T, ...) frames or per-frame features of item ``index`` in ``epoch`` -> the clip
        or the clip reversed along time, and the label that goes with it."""
        if label not in self.twin or self.prob == 0:
            return clip, label
        rng = np.random.default_rng([self.seed, self.STREAM, epoch, index])
        if rng.random() >= self.prob:
            return clip, label
        return self.transform(clip), self.twin[label]

    def expected_counts(self, counts: Sequence[int]) -> list[float]:
        """Per-class training clips per epoch once reversal moves some to their twin (for
        ``loss.alpha=auto``): (1 - p) n_a + p n_b for twins a, b."""
        out = [float(n) for n in counts]
        for a, b in self.twin.items():
            if a != b:
                out[a] = (1 - self.prob) * counts[a] + self.prob * counts[b]
        return out


def reverse_pairs_to_indices(pairs: Sequence[Sequence[str]], class_names: Sequence[str], *,
                             key: str = "data.reverse_pairs") -> list[tuple[int, int]]:
    """``data.reverse_pairs`` (or ``key``: ``data.mirror_pairs``) names -> class index pairs.

    Raises:
        ConfigError: a pair that is not two names, or a name that is not one of the dataset's classes.
    """
    index = {name: i for i, name in enumerate(class_names)}
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ConfigError(f"{key}: {list(pair)!r} is not a pair of two class names")
        for name in pair:
            if name not in index:
                raise ConfigError(f"{key}: class {name!r} is not in the dataset "
                                 f"(classes: {', '.join(class_names)})")
        out.append((index[pair[0]], index[pair[1]]))
    return out


def probe_scores(forward: torch.Tensor, backward: torch.Tensor, labels: Sequence[int], num_classes: int, *,
                 folds: int = 5, steps: int = 300, seed: int = 0) -> torch.Tensor:
    """How much each class played backwards looks like each other class, to a linear probe on clip summaries.

    A linear probe learns 2C labels, "class a" and "class a played backwards", from order-aware
    summaries of the training clips (``CNNLSTM.order_summary``), class-balanced, and is scored on
    videos it did not see (``folds`` folds over videos). If a clip of a played backwards *is* a clip
    of b, the probe cannot tell "a backwards" from "b" and splits the clips of both labels between
    them in some proportion: S[a][b] = P(says b | a backwards) + P(says a backwards | b) is then
    about 1, against about 0 for classes it can tell apart (a two-sample test by classifier). On
    weak summaries it cannot say *which* of several similar classes is the twin (an appear played
    backwards is close to a vanish and to an exit): ``twin_groups`` uses it for where to look.

    Args:
        forward, backward: (N, V, S) summaries of N training videos' V views, played forwards and backwards.
        labels: the N videos' class indices.

    Returns:
        (C, C) symmetric score (S[a][b] + S[b][a]) / 2, zeros with fewer than two videos.
    """
    n, v, _ = forward.shape
    if n < 2:  # nothing to hold out
        return torch.zeros(num_classes, num_classes, dtype=torch.float64)
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
    return (s + s.T) / 2


def twin_groups(probe: torch.Tensor, *, related: float = RELATED_SCORE, suspect: float = SUSPECT_SCORE) -> list[list[int]]:
    """Where to look for twins: the classes linked by probe pairs scoring ``related`` or more (connected
    components), each group kept only when one of its pairs scores ``suspect`` or more. Groups of a
    single class are dropped. A class is never its own twin here: that would teach a class to ignore
    its own direction on a guess."""
    import networkx as nx

    c = probe.shape[0]
    graph = nx.Graph()
    graph.add_nodes_from(range(c))
    graph.add_edges_from((a, b) for a in range(c) for b in range(a + 1, c) if probe[a, b] >= related)
    groups = sorted(sorted(g) for g in nx.connected_components(graph))  # by smallest class, members ascending
    return [g for g in groups if len(g) > 1 and any(probe[a, b] >= suspect for a in g for b in g if a < b)]


def scout_scores(new_model: Callable[[], torch.nn.Module], views: Sequence[torch.Tensor], labels: Sequence[int],
                 num_classes: int, *, criterion: torch.nn.Module, mirror: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 backwards: Callable[[torch.Tensor], torch.Tensor] = lambda v: v.flip(1),
                 scouts: int = SCOUTS, epochs: int = SCOUT_EPOCHS, batch_size: int = 16, lr: float = 1e-3,
                 weight_decay: float = 0.05, seed: int = 0, rank: int = 0, world_size: int = 1,
                 gather: Callable[[object], list] = lambda mine: [mine]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which class each class's clips look like when played backwards (and mirrored), to scout heads.

    A scout is a fresh model from ``new_model()`` (the recipe's, built under seed ``seed + k``),
    whose head trains ``epochs`` epochs on the forward clips only (epoch e reads view e mod V, AdamW,
    ``criterion``); it then labels every training clip played backwards. P[a][b] is its softmax for
    b averaged over a's clips, averaged over ``scouts`` scouts (one scout's scores near the bar change
    with its seed); the score is (P[a][b] + P[b][a]) / 2. Unlike the probe it sees what the recipe's
    head sees, so it tells an appear played backwards (a vanish) from an exit; but it has no "none of
    these" answer, so it only decides inside ``twin_groups``. Runs under its own RNG state: the
    caller's draws are unchanged, and the scores depend on ``seed``, not on the caller's model.

    Args:
        new_model: builds an untrained ``CNNLSTM`` with a frozen backbone, on its devices, that
            reads ``views`` (only its head runs).
        views: per training video, its (V, T, D) cached views (features, or ``head_inputs`` for a
            model that reads them).
        labels: the videos' class indices.
        mirror: the left-right flip of a video's (V, T, D) views (``CNNLSTM.mirror_features``, or
            ``mirror_inputs``): the same scouts also label every training clip mirrored
            (``data.mirror_pairs=auto``).
        backwards: plays a video's (V, T, D) views backwards (a flip along time; ``reverse_inputs``).
        rank, world_size, gather: under DDP each rank trains its share of the scouts (scout k on rank
            k mod world_size) and ``gather`` (``engine.distributed.gather_objects``: every rank's
            object, in rank order) brings them together; the sum runs in scout order, so every
            rank's scores equal one process's to the bit.

    Returns:
        (C, C) symmetric score, float64 on the CPU; and with ``mirror``, the scouts' P[a][b] for
        the mirrored clips (not symmetrised: P[a][a] says whether a looks the same mirrored), else None.
    """
    y = torch.as_tensor(list(labels), dtype=torch.long)
    played = [backwards] + ([mirror] if mirror is not None else [])
    mine = {k: _scout_says(new_model, views, y, num_classes, played, criterion=criterion, epochs=epochs,
                           batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed + k)
            for k in range(rank, scouts, world_size)}
    every = {k: says for part in gather(mine) for k, says in part.items()}
    said = torch.zeros(len(played), num_classes, num_classes, dtype=torch.float64)
    for k in range(scouts):
        said += every[k]
    said /= scouts * torch.bincount(y, minlength=num_classes).clamp_min(1).double()[:, None]
    return (said[0] + said[0].T) / 2, (said[1] if mirror is not None else None)


def _scout_says(new_model, views, y, num_classes, played, *, criterion, epochs, batch_size, lr, weight_decay,
                seed) -> torch.Tensor:
    """One scout (``scout_scores``): (len(played), C, C) sums over each class's clips, transformed by
    each of ``played`` (backwards, mirrored), of its softmax."""
    said = torch.zeros(len(played), num_classes, num_classes, dtype=torch.float64)
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=gpus):  # the caller's CPU and GPU draws stay as they were
        torch.manual_seed(seed)
        scout = new_model()
        device = scout.output_device
        order = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW([p for p in scout.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
        scout.train()
        for epoch in range(epochs):
            for idx in torch.randperm(len(views), generator=order).split(batch_size):
                x = torch.stack([views[i][epoch % len(views[i])] for i in idx.tolist()]).to(device)
                loss = criterion(scout(x), y[idx].to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
        scout.eval()
        with torch.no_grad():
            for clips, label in zip(views, y.tolist()):
                clips = clips.to(device)
                for k, play in enumerate(played):
                    said[k, label] += scout(play(clips)).softmax(-1).mean(0).double().cpu()
    return said


def match_twins(scout: torch.Tensor, groups: Sequence[Sequence[int]], *, floor: float = SCOUT_SCORE,
                margin: float = TWIN_MARGIN) -> tuple[list[tuple[int, int, float]], list[tuple[int, int, float]]]:
    """Twins inside each group: the matching of its classes (each class in one pair at most) with the
    highest total ``scout`` score (networkx's maximum-weight matching), of whose pairs those scoring
    ``floor`` or more are twins. Two medium pairs beat one strong pair that would leave two classes
    alone: with appear/vanish 0.43, enter/exit 0.41 and vanish/enter 0.47, the first two are the twins.

    The floor is applied to the matching, not before it: a true pair scoring just under it still
    rules out the rival pairing that would cross it. On the seed-94 set appear/vanish scored 0.33 and
    enter/exit 0.66 against appear/exit 0.40 and vanish/enter 0.39; with the floor first, the two
    crossed pairs (0.79) beat enter/exit alone and both were kept, wrong; matched first (0.99 against
    0.79), enter/exit is a twin and appear/vanish, under the floor, is not (docs/real_footage.md,
    "Four fresh sets").

    A pair of the matching that beats the best matching without it by less than ``margin`` is a coin
    flip between rival pairings of the same classes (appear/exit 0.42 + vanish/enter 0.47 against
    appear/vanish 0.50 + enter/exit 0.38): it is left out, since a wrong pair trains clips played
    backwards under a wrong label and costs more than a missing one (docs/real_footage.md, "Close
    calls left out").

    Returns:
        (pairs kept, pairs left out as close calls), each (a, b, scout score) with a < b, best first.
    """
    import networkx as nx

    graph = nx.Graph()
    graph.add_weighted_edges_from((a, b, float(scout[a, b])) for g in groups for a in g for b in g if a < b)

    def best(g: nx.Graph) -> tuple[list[tuple[int, int]], float]:
        pairs = [tuple(sorted(e)) for e in nx.max_weight_matching(g)]
        return pairs, sum(float(scout[a, b]) for a, b in pairs)

    pairs, total = best(graph)
    kept, close = [], []
    for a, b in pairs:
        if scout[a, b] < floor:
            continue
        without = graph.copy()
        without.remove_edge(a, b)
        (kept if total - best(without)[1] >= margin else close).append((a, b, float(scout[a, b])))
    order = lambda p: (-p[2], p[0])  # noqa: E731
    return sorted(kept, key=order), sorted(close, key=order)


def twin_report(found: Sequence[tuple[int, int, float]], probe: torch.Tensor, groups: Sequence[Sequence[int]],
                classes: Sequence[str], close: Sequence[tuple[int, int, float]] = ()) -> str:
    """One log line on ``data.reverse_pairs=auto``: the twins found with their probe and scout scores,
    then the classes of the searched groups left without a twin (and the close calls among them,
    ``match_twins``), or, with no group to search, the highest probe pair against ``SUSPECT_SCORE``."""
    text = ", ".join(f"{classes[a]}/{classes[b]} (probe {float(probe[a, b]):.2f}, scout {s:.2f})" for a, b, s in found)
    text = text or "no time-reversed twins"
    paired = {c for a, b, _ in found for c in (a, b)}
    alone = [classes[c] for g in groups for c in g if c not in paired]
    if alone:
        text += f"; searched, no twin: {', '.join(alone)}"
        if close:
            text += (" (close calls left out: " + ", ".join(f"{classes[a]}/{classes[b]} {s:.2f}" for a, b, s in close)
                     + f", within {TWIN_MARGIN:.2f} of another pairing)")
        text += " (if you know their twins, name them in data.reverse_pairs)"
    elif not groups and len(classes) > 1:
        n = len(classes)
        s, a, b = max((float(probe[a, b]), a, b) for a in range(n) for b in range(a + 1, n))
        text += f"; highest probe pair {classes[a]}/{classes[b]} ({s:.2f}, a twin needs {SUSPECT_SCORE:.2f})"
    return text
