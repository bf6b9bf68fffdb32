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

from collections.abc import Sequence

import numpy as np
import torch

from actionrec.config import ConfigError


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
