"""Deterministic synthetic UCF101-style action dataset made of real encoded videos.

The dataset exists to test the whole pipeline (decoding, sampling, training,
evaluation) in seconds, and to check that the temporal model actually uses
temporal order. Six of the eight classes come in pairs that differ ONLY in
temporal order: the second member of a pair is the first member's video played
backwards, drawn from the very same random numbers. A model that averages
per-frame features therefore sees the same set of frames for both members and
stays at chance within each pair; a model that reads order (the BiLSTM) can
separate them. The two remaining classes differ in appearance, so even a
frame-averaging model gets them right.

Layout written (mirrors UCF101, including the split list format)::

    out_dir/<Class>/v_<Class>_gXX_cYY.avi      (XVID; a fraction as .mp4 / mp4v)
    out_dir/ucfTrainTestlist/classInd.txt      "1 MoveLeft"
    out_dir/ucfTrainTestlist/trainlist01.txt   "MoveLeft/v_MoveLeft_g04_c01.avi 1"
    out_dir/ucfTrainTestlist/testlist01.txt    "MoveLeft/v_MoveLeft_g01_c01.avi"
    out_dir/.complete                          generation parameters as JSON

Every video is rendered from ``numpy.random.default_rng`` seeded with
(seed, class or pair, group, clip), so a file's content does not depend on
generation order or on which other files are generated.
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import logging
import math
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from actionrec.errors import UsageError

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "MoveLeft",
    "MoveRight",
    "Grow",
    "Shrink",
    "RotateCW",
    "RotateCCW",
    "BlinkingStripes",
    "Checkerboard",
)

# Temporal pairs: (class rendered forward, class that is the same video reversed).
# Rendering runs left-to-right, small-to-large, clockwise; the twin plays it backwards.
TEMPORAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("MoveRight", "MoveLeft"),
    ("Grow", "Shrink"),
    ("RotateCW", "RotateCCW"),
)

SPLIT_DIR_NAME = "ucfTrainTestlist"
MARKER_NAME = ".complete"

# Bump when rendering changes so that ensure_synthetic_dataset() rebuilds caches.
_GENERATOR_VERSION = 4
# Fraction of videos shorter than a typical 8-frame clip, to exercise padding/looping.
_SHORT_FRACTION = 0.1
_SHORT_LIMIT = 8
# Share of groups that go to the test list, like UCF101 split 1 (7 of 25 groups).
_TEST_GROUP_FRACTION = 0.3
_FOURCC_BY_EXT = {".avi": "XVID", ".mp4": "mp4v"}

_REVERSED_OF = {rev: fwd for fwd, rev in TEMPORAL_PAIRS}
_FORWARD_OF = {fwd: rev for fwd, rev in TEMPORAL_PAIRS}


def _stream_id(name: str) -> int:
    # crc32 instead of hash(): Python salts str hashes per process.
    return zlib.crc32(name.encode("utf-8"))


def _unit_name(class_name: str) -> str:
    """Both members of a temporal pair share one random stream (the forward name)."""
    return _REVERSED_OF.get(class_name, class_name)


# ----------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------


def _bright_color(rng: np.random.Generator) -> tuple[float, float, float]:
    """A saturated, bright BGR colour that stands out from the muted backgrounds."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.55, 1.0), rng.uniform(0.85, 1.0))
    return (255.0 * b, 255.0 * g, 255.0 * r)


def _background(group_rng: np.random.Generator, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Static background: kind and palette come from the group, details from the clip.

    UCF101 groups share recording conditions, so clips of one group (across all
    classes) look alike; that is what makes a group-disjoint split meaningful.
    """
    kind = group_rng.choice(["solid", "gradient", "texture"])
    base = group_rng.uniform(25.0, 150.0, size=3)
    other = group_rng.uniform(25.0, 150.0, size=3)
    angle = group_rng.uniform(0.0, 2.0 * math.pi)
    amplitude = group_rng.uniform(12.0, 35.0)

    base = base + rng.uniform(-15.0, 15.0, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "solid":
        bg = np.broadcast_to(base.astype(np.float32), (height, width, 3)).copy()
    elif kind == "gradient":
        angle += rng.uniform(-0.5, 0.5)
        proj = xx * math.cos(angle) + yy * math.sin(angle)
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
        bg = base.astype(np.float32) * (1.0 - t[..., None]) + other.astype(np.float32) * t[..., None]
    else:
        # Upsampling a tiny random grid gives a smooth, low-frequency texture
        # that cannot be confused with the striped / checkered classes.
        low = rng.uniform(-1.0, 1.0, size=(4, 5, 3)).astype(np.float32)
        tex = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
        bg = base.astype(np.float32) + amplitude * tex
    return np.clip(bg, 0.0, 255.0).astype(np.float32)


def _progress(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Motion progress in [0, 1] per frame, with optional still frames at both ends.

    Still frames are drawn symmetrically for start and end so that reversing a
    video does not change the distribution of still phases either.
    """
    min_moving = max(2, math.ceil(0.6 * num_frames))
    budget = num_frames - min_moving
    still_start = int(rng.integers(0, budget // 2 + 1))
    still_end = int(rng.integers(0, budget // 2 + 1))
    moving = num_frames - still_start - still_end
    t = np.clip((np.arange(num_frames) - still_start) / (moving - 1), 0.0, 1.0)
    # Non-uniform speed: accelerating or decelerating motion.
    return t ** rng.uniform(0.75, 1.33)


def _polygon(kind: str, radius: float) -> np.ndarray:
    """Vertices (N, 2) of a simple shape centred at the origin."""
    if kind == "circle":
        angles = np.linspace(0.0, 2.0 * math.pi, 32, endpoint=False)
        scale = radius
    elif kind == "square":
        angles = np.deg2rad([45.0, 135.0, 225.0, 315.0])
        scale = radius * 1.1
    elif kind == "diamond":
        angles = np.deg2rad([0.0, 90.0, 180.0, 270.0])
        scale = radius * 1.25
    elif kind == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        scale = radius * 1.25
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * scale


def _fill(img: np.ndarray, points: np.ndarray, color: tuple[float, float, float]) -> None:
    # 4 fractional bits: sub-pixel positions keep slow motion smooth at 64x48.
    pts = np.round(points * 16.0).astype(np.int32)
    cv2.fillPoly(img, [pts], color, lineType=cv2.LINE_AA, shift=4)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    # Image y points down, so a growing angle turns clockwise on screen.
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _render_move(rng: np.random.Generator, bg: np.ndarray, n: int) -> list[np.ndarray]:
    h, w = bg.shape[:2]
    shape = str(rng.choice(["circle", "square", "triangle", "diamond"]))
    color = _bright_color(rng)
    radius = rng.uniform(0.12, 0.18) * min(h, w)
    travel = rng.uniform(0.45, 0.75) * w
    x0 = rng.uniform(radius, max(radius, w - radius - travel))
    y0 = rng.uniform(radius, h - radius)
    y1 = float(np.clip(y0 + rng.uniform(-0.15, 0.15) * h, radius, h - radius))
    p = _progress(rng, n)
    base = _polygon(shape, radius)
    frames = []
    for t in p:
        img = bg.copy()
        _fill(img, base + (x0 + t * travel, y0 + t * (y1 - y0)), color)
        frames.append(img)
    return frames


def _render_grow(rng: np.random.Generator, bg: np.ndarray, n: int) -> list[np.ndarray]:
    h, w = bg.shape[:2]
    side = min(h, w)
    shape = str(rng.choice(["circle", "square", "triangle", "diamond"]))
    color = _bright_color(rng)
    r0 = rng.uniform(0.05, 0.09) * side
    r1 = rng.uniform(0.32, 0.45) * side
    cx = w / 2 + rng.uniform(-0.12, 0.12) * w
    cy = h / 2 + rng.uniform(-0.12, 0.12) * h
    angle = rng.uniform(0.0, 2.0 * math.pi)
    p = _progress(rng, n)
    frames = []
    for t in p:
        img = bg.copy()
        # Geometric interpolation: equal ratios per step look like constant growth.
        radius = r0 * (r1 / r0) ** t
        _fill(img, _rotate(_polygon(shape, radius), angle) + (cx, cy), color)
        frames.append(img)
    return frames


def _render_rotate(rng: np.random.Generator, bg: np.ndarray, n: int) -> list[np.ndarray]:
    """A clock hand (bar + ball) or a satellite (ball orbiting a hub) turning about the hub.

    The ball is the part that carries the direction: it travels along a circle, so even a
    backbone that only knows roughly where things are (a 2x2 feature grid) sees which way it goes.
    """
    h, w = bg.shape[:2]
    side = min(h, w)
    kind = str(rng.choice(["hand", "satellite"]))
    color = _bright_color(rng)
    orbit = rng.uniform(0.24, 0.30) * side
    ball = rng.uniform(0.08, 0.11) * side
    half_width = max(1.5, rng.uniform(0.025, 0.04) * side)
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    cy = h / 2 + rng.uniform(-0.08, 0.08) * h
    start = rng.uniform(0.0, 2.0 * math.pi)
    p = _progress(rng, n)
    # Cap the largest frame-to-frame step at 80 degrees so the turning direction
    # stays unambiguous even in short videos.
    total = min(math.radians(rng.uniform(210.0, 330.0)), math.radians(80.0) / float(np.diff(p).max()))
    parts = [_polygon("circle", ball) + (orbit, 0.0)]
    if kind == "hand":
        parts.append(np.array([[0.0, -half_width], [orbit, -half_width], [orbit, half_width], [0.0, half_width]]))
    hub = _polygon("circle", max(1.5, 0.04 * side)) + (cx, cy)
    frames = []
    for t in p:
        img = bg.copy()
        _fill(img, hub, color)
        for part in parts:
            _fill(img, _rotate(part, start + t * total) + (cx, cy), color)
        frames.append(img)
    return frames


def _texture_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright and a dark colour for a two-tone texture (BGR, float32)."""
    light = np.array(_bright_color(rng), dtype=np.float32)
    dark = rng.uniform(0.0, 60.0, size=3).astype(np.float32)
    return light, dark


def _patch_mask(rng: np.random.Generator, side: int) -> np.ndarray:
    """Square or round (side, side) boolean mask."""
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:side, 0:side]
        c = (side - 1) / 2
        return (yy - c) ** 2 + (xx - c) ** 2 <= (side / 2) ** 2
    return np.ones((side, side), dtype=bool)


def _paste(img: np.ndarray, patch: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """Paste a patch with top-left corner (x, y), clipped to the image."""
    h, w = img.shape[:2]
    ph, pw = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + pw, w), min(y + ph, h)
    if x0 >= x1 or y0 >= y1:
        return
    sub_mask = mask[y0 - y : y1 - y, x0 - x : x1 - x]
    region = img[y0:y1, x0:x1]
    region[sub_mask] = patch[y0 - y : y1 - y, x0 - x : x1 - x][sub_mask]


def _render_stripes(rng: np.random.Generator, bg: np.ndarray, n: int) -> list[np.ndarray]:
    h, w = bg.shape[:2]
    side = int(rng.uniform(0.40, 0.60) * min(h, w))
    period = max(4.0, rng.uniform(0.12, 0.18) * min(h, w))
    theta = rng.uniform(0.0, math.pi)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
    on = np.sin(2.0 * math.pi * phase) > 0
    light, dark = _texture_colors(rng)
    mask = _patch_mask(rng, side)
    patch_a = np.where(on[..., None], light, dark)
    patch_b = np.where(on[..., None], dark, light)
    blink_every = int(rng.integers(2, 5))
    x = rng.uniform(0, max(w - side, 0))
    y = rng.uniform(0, max(h - side, 0))
    frames = []
    for i in range(n):
        img = bg.copy()
        # The stripes swap colours (a half-period phase flip) every few frames.
        patch = patch_a if (i // blink_every) % 2 == 0 else patch_b
        jx, jy = rng.normal(0.0, 0.6, size=2)
        _paste(img, patch, mask, int(round(x + jx)), int(round(y + jy)))
        frames.append(img)
    return frames


def _render_checkerboard(rng: np.random.Generator, bg: np.ndarray, n: int) -> list[np.ndarray]:
    h, w = bg.shape[:2]
    side = int(rng.uniform(0.40, 0.60) * min(h, w))
    cell = max(3.0, rng.uniform(0.10, 0.15) * min(h, w))
    yy, xx = np.mgrid[0:side, 0:side]
    board = ((xx // cell).astype(int) + (yy // cell).astype(int)) % 2 == 0
    light, dark = _texture_colors(rng)
    mask = _patch_mask(rng, side)
    patch = np.where(board[..., None], light, dark)
    pos = np.array([rng.uniform(0, max(w - side, 0)), rng.uniform(0, max(h - side, 0))])
    velocity = rng.normal(0.0, 0.02 * min(h, w), size=2)
    limit = np.array([max(w - side, 0), max(h - side, 0)], dtype=np.float64)
    frames = []
    for _ in range(n):
        img = bg.copy()
        _paste(img, patch, mask, int(round(pos[0])), int(round(pos[1])))
        frames.append(img)
        # Random-walk drift, bouncing off the borders.
        velocity += rng.normal(0.0, 0.01 * min(h, w), size=2)
        pos += velocity
        for k in range(2):
            if pos[k] < 0 or pos[k] > limit[k]:
                velocity[k] = -velocity[k]
                pos[k] = float(np.clip(pos[k], 0, limit[k]))
    return frames


# One renderer per random stream: the forward member of a pair, or an appearance class.
_RENDERERS = {
    "MoveRight": _render_move,
    "Grow": _render_grow,
    "RotateCW": _render_rotate,
    "BlinkingStripes": _render_stripes,
    "Checkerboard": _render_checkerboard,
}


def render_synthetic_video(
    class_name: str,
    group: int,
    clip: int,
    num_frames: int,
    *,
    width: int = 160,
    height: int = 120,
    seed: int = 0,
) -> np.ndarray:
    """Render one synthetic video in memory, before encoding.

    The reversed member of a temporal pair (``MoveLeft``, ``Shrink``, ``RotateCCW``)
    is exactly its forward twin with the same (group, clip) played backwards.

    Args:
        class_name: One of ``SYNTHETIC_CLASSES``.
        group: 1-based group number (shares background style across classes).
        clip: 1-based clip number within the group.
        num_frames: Number of frames, at least 2.
        width: Frame width in pixels.
        height: Frame height in pixels.
        seed: Dataset seed.

    Returns:
        uint8 array (T, H, W, 3) in BGR order, as OpenCV writes it.
    """
    if class_name not in SYNTHETIC_CLASSES:
        raise ValueError(f"unknown synthetic class {class_name!r}; expected one of {SYNTHETIC_CLASSES}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    unit = _unit_name(class_name)
    group_rng = np.random.default_rng([seed, _stream_id("group"), group])
    rng = np.random.default_rng([seed, _stream_id(unit), group, clip, 1])
    bg = _background(group_rng, rng, width, height)
    frames = _RENDERERS[unit](rng, bg, num_frames)
    sigma = rng.uniform(0.0, 8.0)
    video = np.stack(frames)  # (T, H, W, 3) float32
    if sigma > 0:
        video += sigma * rng.standard_normal(video.shape, dtype=np.float32)
    video = np.clip(np.round(video), 0, 255).astype(np.uint8)
    if class_name in _REVERSED_OF:
        video = video[::-1].copy()
    return video


# ----------------------------------------------------------------------------
# Dataset generation
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticParams:
    """What a synthetic dataset is generated from; checked on creation.

    Attributes:
        num_groups: Groups per class (>= 2).
        clips_per_group: Clips per group and class.
        width: Frame width (even).
        height: Frame height (even).
        fps: Frame rate stored in the containers.
        min_frames: Shortest video length (>= 2).
        max_frames: Longest video length.
        seed: Seed for all random choices.
        mp4_fraction: Share of (group, clip) slots written as .mp4 (mp4v) instead of .avi (XVID).
    """

    num_groups: int = 10
    clips_per_group: int = 6
    width: int = 160
    height: int = 120
    fps: float = 25.0
    min_frames: int = 6
    max_frames: int = 64
    seed: int = 0
    mp4_fraction: float = 0.25

    def __post_init__(self) -> None:
        for f in fields(self):  # normalise 10.0 to 10 and "3" to 3, as the marker file compares them
            object.__setattr__(self, f.name, float(getattr(self, f.name)) if f.type == "float"
                               else int(getattr(self, f.name)))
        checks = [
            ("num_groups", self.num_groups >= 2, "must be >= 2 so that train and test both get groups"),
            ("clips_per_group", self.clips_per_group >= 1, "must be >= 1"),
            # Codecs silently crop odd sizes to even ones; refuse instead.
            ("width", self.width >= 16 and self.width % 2 == 0, "must be even and >= 16"),
            ("height", self.height >= 16 and self.height % 2 == 0, "must be even and >= 16"),
            ("fps", self.fps > 0, "must be > 0"),
            ("min_frames", self.min_frames >= 2, "must be >= 2 (motion needs two frames)"),
            ("max_frames", self.max_frames >= self.min_frames, "must be >= min_frames"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("mp4_fraction", 0.0 <= self.mp4_fraction <= 1.0, "must be in [0, 1]"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise UsageError(f"{key}={getattr(self, key)!r} {why}")

    def marker(self) -> dict:
        """What the marker file stores: the parameters and the generator version."""
        return {"version": _GENERATOR_VERSION, **asdict(self)}


def _pick_slots(seed: int, stream: str, slots: list[tuple[int, int]], count: int) -> set[tuple[int, int]]:
    rng = np.random.default_rng([seed, _stream_id(stream)])
    order = rng.permutation(len(slots))
    return {slots[i] for i in order[:count]}


def _num_test_groups(num_groups: int) -> int:
    return min(max(1, round(_TEST_GROUP_FRACTION * num_groups)), num_groups - 1)


def _video_length(seed: int, unit: str, group: int, clip: int, short: bool, min_frames: int, max_frames: int) -> int:
    rng = np.random.default_rng([seed, _stream_id(unit), group, clip, 0])
    short_hi = min(_SHORT_LIMIT - 1, max_frames)
    long_lo = max(_SHORT_LIMIT, min_frames)
    if short and min_frames <= short_hi:
        return int(rng.integers(min_frames, short_hi + 1))
    if long_lo <= max_frames:
        return int(rng.integers(long_lo, max_frames + 1))
    return int(rng.integers(min_frames, max_frames + 1))


def _write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    fourcc = _FOURCC_BY_EXT[path.suffix]
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(
            f"cv2.VideoWriter could not open {path} with fourcc {fourcc!r}; "
            "this OpenCV build lacks the codec (opencv-python wheels ship FFmpeg with it)"
        )
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()


def _write_lines(path: Path, lines: list[str]) -> None:
    # UCF's own lists use CRLF; we write LF and the parser accepts both.
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8", newline="\n")


def generate_synthetic_dataset(out_dir: str | Path, *, progress: bool = False, **params) -> Path:
    """Write the synthetic dataset (videos and UCF-format split lists) to ``out_dir``.

    Groups g01..gK (K = 30% of groups, at least one) form the test list and the
    rest the train list, so no group is on both sides. Which (group, clip) slots
    are encoded as .mp4 and which hold videos shorter than 8 frames is decided
    per slot across all classes, so neither container nor length hints at the class.

    Args:
        out_dir: Target folder; must be absent or empty.
        progress: Show a tqdm progress bar.
        **params: Fields of ``SyntheticParams`` (``num_groups``, ``width``, ``seed``, ...);
            the others keep their defaults.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        UsageError: A parameter is out of range (a ValueError).
        FileExistsError: ``out_dir`` exists and is not empty.
        RuntimeError: OpenCV cannot open a writer for a codec.
    """
    spec = SyntheticParams(**params)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it or use ensure_synthetic_dataset()")
    layout = _Layout.plan(spec)
    _write_videos(out_dir, spec, layout, progress)
    train_lines, test_lines = _write_split_lists(out_dir, spec, layout)
    # Written last: its presence means every file above is complete.
    (out_dir / MARKER_NAME).write_text(json.dumps(spec.marker(), sort_keys=True) + "\n", encoding="utf-8")
    logger.debug(
        "synthetic dataset in %s: %d videos (%d train, %d test)",
        out_dir, len(train_lines) + len(test_lines), len(train_lines), len(test_lines),
    )
    return out_dir


@dataclass(frozen=True)
class _Layout:
    """Which (group, clip) slots exist, which are .mp4 and which hold short videos; file names."""

    slots: list[tuple[int, int]]
    mp4_slots: set[tuple[int, int]]
    short_slots: set[tuple[int, int]]
    group_digits: int
    clip_digits: int

    @classmethod
    def plan(cls, spec: SyntheticParams) -> _Layout:
        slots = [(g, c) for g in range(1, spec.num_groups + 1) for c in range(1, spec.clips_per_group + 1)]
        num_short = max(1, round(_SHORT_FRACTION * len(slots))) if spec.min_frames < _SHORT_LIMIT else 0
        return cls(
            slots=slots,
            mp4_slots=_pick_slots(spec.seed, "mp4", slots, round(spec.mp4_fraction * len(slots))),
            short_slots=_pick_slots(spec.seed, "short", slots, num_short),
            group_digits=max(2, len(str(spec.num_groups))),
            clip_digits=max(2, len(str(spec.clips_per_group))),
        )

    def entry(self, name: str, g: int, c: int) -> str:
        """"<Class>/v_<Class>_gXX_cYY.<ext>", relative to the dataset root."""
        ext = ".mp4" if (g, c) in self.mp4_slots else ".avi"
        return f"{name}/v_{name}_g{g:0{self.group_digits}d}_c{c:0{self.clip_digits}d}{ext}"


def _write_videos(out_dir: Path, spec: SyntheticParams, layout: _Layout, progress: bool) -> None:
    for name in SYNTHETIC_CLASSES:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    units = [name for name in SYNTHETIC_CLASSES if name in _RENDERERS]
    jobs = [(unit, g, c) for unit in units for g, c in layout.slots]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="synthetic videos", unit="video")
    for unit, g, c in jobs:
        n = _video_length(spec.seed, unit, g, c, (g, c) in layout.short_slots, spec.min_frames, spec.max_frames)
        video = render_synthetic_video(unit, g, c, n, width=spec.width, height=spec.height, seed=spec.seed)
        members = [(unit, video)]
        if unit in _FORWARD_OF:
            # Same frames backwards: identical per-frame statistics, opposite motion.
            members.append((_FORWARD_OF[unit], video[::-1]))
        for name, frames in members:
            _write_video(out_dir / layout.entry(name, g, c), frames, spec.fps)


def _write_split_lists(out_dir: Path, spec: SyntheticParams, layout: _Layout) -> tuple[list[str], list[str]]:
    """classInd.txt, trainlist01.txt (with labels) and testlist01.txt (the first groups); their lines."""
    test_groups = set(range(1, _num_test_groups(spec.num_groups) + 1))
    train_lines, test_lines = [], []
    for label, name in enumerate(SYNTHETIC_CLASSES, start=1):
        for g, c in layout.slots:
            rel = layout.entry(name, g, c)
            if g in test_groups:
                test_lines.append(rel)
            else:
                train_lines.append(f"{rel} {label}")
    split_dir = out_dir / SPLIT_DIR_NAME
    split_dir.mkdir(exist_ok=True)
    _write_lines(split_dir / "classInd.txt", [f"{i} {name}" for i, name in enumerate(SYNTHETIC_CLASSES, start=1)])
    _write_lines(split_dir / "trainlist01.txt", train_lines)
    _write_lines(split_dir / "testlist01.txt", test_lines)
    return train_lines, test_lines


def _marker_matches(path: Path, params: dict) -> bool:
    marker = path / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == params
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Serialise generation across processes (DDP ranks, parallel test workers)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent generation is then the caller's problem.
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_synthetic_dataset(cache_dir: str | Path, **kwargs) -> Path:
    """Return a complete synthetic dataset at ``cache_dir``, generating it if needed.

    Generation is skipped when ``cache_dir/.complete`` records the same parameters.
    Otherwise the dataset is generated into a temporary sibling folder and renamed
    into place, so readers never see a half-written dataset.

    Args:
        cache_dir: Where the dataset should live.
        **kwargs: ``progress`` and the fields of ``SyntheticParams``, as for ``generate_synthetic_dataset``.

    Returns:
        ``cache_dir`` as a Path.

    Raises:
        FileExistsError: ``cache_dir`` holds files the generator did not write
            (it is never deleted then).
    """
    progress = bool(kwargs.pop("progress", False))
    ours = set(SYNTHETIC_CLASSES) | {SPLIT_DIR_NAME, MARKER_NAME}
    return build_atomically(Path(cache_dir), SyntheticParams(**kwargs).marker(), ours, "synthetic",
                            lambda tmp: generate_synthetic_dataset(tmp, **kwargs, progress=progress))


def build_atomically(cache_dir: Path, params: dict, ours: set[str], what: str, generate: Callable[[Path], object]) -> Path:
    """``cache_dir`` as ``generate(folder)`` writes it, unless its marker already records ``params``.

    Generation goes to a temporary sibling folder renamed into place, under a file lock, so readers
    (DDP ranks, parallel tests) never see a half-written dataset. A folder holding anything but
    ``ours`` (names a generator writes) is never replaced: FileExistsError.
    """
    if _marker_matches(cache_dir, params):
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir.parent / f".{cache_dir.name}.lock"):
        if _marker_matches(cache_dir, params):  # another process finished while we waited
            return cache_dir
        if cache_dir.exists() and not (cache_dir.is_dir() and all(c.name in ours for c in cache_dir.iterdir())):
            raise FileExistsError(f"{cache_dir} exists and holds files not written by the {what} generator")
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent))
        try:
            generate(tmp)
            if cache_dir.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.stale-", dir=cache_dir.parent))
                stale.rmdir()
                cache_dir.rename(stale)
                tmp.rename(cache_dir)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                tmp.rename(cache_dir)
            logger.info("generated %s dataset in %s", what, cache_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return cache_dir
