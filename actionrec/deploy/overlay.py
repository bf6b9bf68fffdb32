"""Drawing predictions onto frames (OpenCV only)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_overlay(frame: np.ndarray, topk: Sequence[tuple[str, float]], fps: float, *, note: str = "") -> np.ndarray:
    """Draw top-k labels with probabilities and the fps on a BGR frame, in place.

    Text scales with the frame height so it stays legible from 120p to 1080p.
    """
    h, w = frame.shape[:2]
    scale = max(0.35, h / 720 * 0.9)
    thick = max(1, int(round(scale * 2)))
    line = int(30 * scale) + 4
    lines = [(f"{name}  {p * 100:5.1f}%", (80, 255, 80) if i == 0 else (255, 255, 255))
             for i, (name, p) in enumerate(topk)]
    if not lines:
        lines = [("warming up...", (200, 200, 200))]
    lines.append((f"{fps:5.1f} fps" + (f"  {note}" if note else ""), (0, 220, 255)))
    width = max(cv2.getTextSize(text, _FONT, scale, thick)[0][0] for text, _ in lines) + 12
    # Darken the box behind the text instead of painting it opaque, so the scene stays visible.
    y1 = min(h, line * len(lines) + 8)
    x1 = min(w, width)
    frame[:y1, :x1] = (frame[:y1, :x1] * 0.45).astype(frame.dtype)
    for i, (text, color) in enumerate(lines):
        cv2.putText(frame, text, (6, line * (i + 1)), _FONT, scale, color, thick, cv2.LINE_AA)
    return frame


def crop_box(height: int, width: int, *, resize_short: int, crop_size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the eval transform's centre crop in the source frame's pixels."""
    scale = resize_short / min(height, width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    y, x = (nh - crop_size) // 2, (nw - crop_size) // 2
    return (int(round(x / scale)), int(round(y / scale)),
            int(round((x + crop_size) / scale)), int(round((y + crop_size) / scale)))


def draw_heatmap(frame: np.ndarray, cam: np.ndarray, *, box: tuple[int, int, int, int] | None = None,
                 alpha: float = 0.6) -> np.ndarray:
    """Blend a heatmap in [0, 1] onto a BGR frame (a new array), inside ``box`` (x0, y0, x1, y1) or everywhere.

    Colour (OpenCV's JET) and opacity both follow the heat: hot regions turn red, cold ones keep the
    frame with a light blue tint, so the scene stays readable around the evidence.
    """
    out = frame.copy()
    x0, y0, x1, y1 = box or (0, 0, frame.shape[1], frame.shape[0])
    region = out[y0:y1, x0:x1]
    if region.size == 0:
        return out
    heat = cv2.resize(np.asarray(cam, np.float32), (region.shape[1], region.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(heat, 0.0, 1.0)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    a = (0.15 + (alpha - 0.15) * heat)[..., None]
    out[y0:y1, x0:x1] = (region * (1 - a) + colour * a).round().clip(0, 255).astype(np.uint8)
    return out
