"""Clip transforms: a train preset and an eval preset over albumentations, plus frame occlusion.

Every frame of a clip gets the same random parameters: albumentations' ``images`` target applies
one sampled crop/flip/jitter to the whole (T, H, W, C) stack. Normalisation is the last
albumentations step, so occlusion (which runs after it, train only) blanks frames and patches
to 0, i.e. to the dataset mean colour, as torchvision's RandomErasing does.
"""

from __future__ import annotations

import os
from typing import Sequence

# albumentations otherwise queries PyPI for a newer version on import: training must work, silently
# and quickly, on cluster nodes with no network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from actionrec.data.occlusion import FrameOcclusion  # noqa: E402,F401  (the train preset's occlusion)


class ClipTransform:
    """Applies one albumentations pipeline to every frame of a clip with shared random parameters.

    Call with a uint8 (T, H, W, 3) RGB clip and a numpy Generator; returns a float32 tensor
    (T, 3, H', W'). The albumentations seed is drawn from ``rng``, so a clip's augmentation is a
    pure function of the generator state (reproducible across workers and resumes).
    """

    def __init__(self, pipeline: A.Compose, occlusion: FrameOcclusion | None = None):
        self.pipeline = pipeline
        self.occlusion = occlusion if occlusion is not None and occlusion.active else None

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected a (T, H, W, 3) clip, got shape {frames.shape}")
        if rng is not None:
            self.pipeline.set_random_seed(int(rng.integers(2**31)))
        clip = self.pipeline(images=frames)["images"]  # (T, H', W', 3) float32, normalised
        if self.occlusion is not None and rng is not None:
            clip, _ = self.occlusion(clip, rng)
        # (T, H, W, C) -> (T, C, H, W)
        return torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 3, 1, 2)))

    def frame(self, image: np.ndarray) -> torch.Tensor:
        """Transform a single RGB uint8 frame (H, W, 3) to (3, H', W') (streaming demo)."""
        return self(image[None])[0]


def _normalize(mean: Sequence[float], std: Sequence[float]) -> A.Normalize:
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)


def train_transform(
    *,
    resize_short: int,
    crop_size: int,
    crop_scale: tuple[float, float] = (0.35, 1.0),
    crop_ratio: tuple[float, float] = (0.75, 1.3333333),
    hflip: bool = True,
    color_jitter: float = 0.4,
    mean: Sequence[float],
    std: Sequence[float],
    occlusion: FrameOcclusion | None = None,
) -> ClipTransform:
    """Train preset: resize short side, random-resized crop, flip, colour jitter, normalise, occlusion.

    Args:
        resize_short: short side after the first resize.
        crop_size: output height and width.
        crop_scale: area range of the random crop relative to the resized frame.
        crop_ratio: aspect-ratio range of the random crop.
        hflip: horizontal flip with p=0.5. Turn off when a class depends on left/right direction.
        color_jitter: brightness/contrast/saturation strength (0 disables), applied with p=0.8.
        mean: normalisation mean (RGB, 0..1 scale).
        std: normalisation std.
        occlusion: random frame occlusion applied after normalisation, or None.
    """
    steps: list = [
        A.SmallestMaxSize(max_size=resize_short, interpolation=cv2.INTER_LINEAR),
        A.RandomResizedCrop(size=(crop_size, crop_size), scale=tuple(crop_scale), ratio=tuple(crop_ratio)),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color_jitter > 0:
        cj = color_jitter
        steps.append(A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=0.0, p=0.8))
    steps.append(_normalize(mean, std))
    return ClipTransform(A.Compose(steps), occlusion)


def eval_transform(
    *, resize_short: int, crop_size: int, mean: Sequence[float], std: Sequence[float], crop: str = "center"
) -> ClipTransform:
    """Eval preset: resize short side, then a deterministic crop (centre, or 'left'/'right' for 3-crop)."""
    if crop == "center":
        cropper = A.CenterCrop(height=crop_size, width=crop_size)
    elif crop in ("left", "right"):
        # Three-crop testing (as in MMAction2's ThreeCrop): the two ends of the long side plus the centre.
        cropper = _SideCrop(crop_size, side=crop)
    else:
        raise ValueError(f"crop must be center, left or right, got {crop!r}")
    steps = [A.SmallestMaxSize(max_size=resize_short, interpolation=cv2.INTER_LINEAR), cropper, _normalize(mean, std)]
    return ClipTransform(A.Compose(steps))


class _SideCrop(A.ImageOnlyTransform):
    """Crop a square at the start ('left'/top) or end ('right'/bottom) of the long side, centred across."""

    def __init__(self, size: int, side: str):
        super().__init__(p=1.0)
        self.size, self.side = size, side

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        h, w = img.shape[:2]
        s = self.size
        if w >= h:
            y = (h - s) // 2
            x = 0 if self.side == "left" else w - s
        else:
            x = (w - s) // 2
            y = 0 if self.side == "left" else h - s
        return img[y : y + s, x : x + s]

