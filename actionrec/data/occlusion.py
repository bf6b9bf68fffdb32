"""Random frame occlusion, a train-time augmentation; also the config's ``data.occlusion`` section.

numpy only, so ``actionrec.config`` can take it as a section type without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class FrameOcclusion:
    """Random frame occlusion on a normalised (T, H, W, C) float clip, train time only.

    Whole-frame occlusion (with probability ``prob`` per clip): between 1 and ``max_frac * T``
    frames are blanked (set to 0, the mean colour) or replaced by their predecessor ('neighbour',
    a dropped frame as a real camera or codec produces it). Patch erasing (with probability
    ``patch_prob`` per clip): a ``patch_frame_frac`` share of frames each get one rectangle of up to
    ``patch_max_area`` of the frame set to 0, at an independent position per frame.
    """

    prob: float = 0.0  # probability that a clip gets whole-frame occlusion
    max_frac: float = 0.25  # at most this fraction of the clip's frames is occluded
    mode: Literal["blank", "neighbour", "mixed"] = "mixed"
    patch_prob: float = 0.0  # probability that a clip gets erased patches
    patch_frame_frac: float = 0.5  # fraction of frames that receive a patch when it fires
    patch_max_area: float = 0.2  # largest patch as a fraction of the frame area

    def __post_init__(self) -> None:
        if self.mode not in ("blank", "neighbour", "mixed"):
            raise ValueError(f"occlusion mode must be blank, neighbour or mixed, got {self.mode!r}")

    @property
    def active(self) -> bool:
        return self.prob > 0 or self.patch_prob > 0

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Occlude ``clip`` in place.

        Returns:
            The clip and a bool mask (T,) of frames that were blanked or replaced.
        """
        t, h, w = clip.shape[:3]
        occluded = np.zeros(t, dtype=bool)
        if self.prob > 0 and rng.random() < self.prob:
            max_n = max(1, int(self.max_frac * t))
            n = int(rng.integers(1, max_n + 1))
            for i in np.sort(rng.choice(t, size=n, replace=False)):
                mode = self.mode if self.mode != "mixed" else ("blank", "neighbour")[int(rng.integers(2))]
                if mode == "neighbour" and i > 0:
                    clip[i] = clip[i - 1]
                else:  # frame 0 has no predecessor: blank it instead
                    clip[i] = 0
                occluded[i] = True
        if self.patch_prob > 0 and rng.random() < self.patch_prob:
            n = max(1, int(round(self.patch_frame_frac * t)))
            for i in rng.choice(t, size=n, replace=False):
                area = rng.uniform(0.02, self.patch_max_area) * h * w
                aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
                ph = int(min(h, max(1, round(np.sqrt(area * aspect)))))
                pw = int(min(w, max(1, round(np.sqrt(area / aspect)))))
                y = int(rng.integers(0, h - ph + 1))
                x = int(rng.integers(0, w - pw + 1))
                clip[i, y : y + ph, x : x + pw] = 0
        return clip, occluded
