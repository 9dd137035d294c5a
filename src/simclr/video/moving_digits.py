"""Moving-MNIST-style clips from real digit images: one digit per clip (its label is the clip's
label) bouncing off the borders of a black canvas, at one of two speeds, in a random direction.

Real labelled video is not available offline; this gives clips whose content is real
handwriting and whose label can only be read from the frames, for tests and benchmarks.
"""

from __future__ import annotations

import math

import numpy as np

SPEEDS = (1.0, 3.0)  # pixels per frame on a 64 px canvas, scaled with the canvas


def bounce(start: float, velocity: float, frames: int, room: float) -> np.ndarray:
    """Positions in [0, room] of a point moving at `velocity` per frame, reflected at both ends."""
    if room <= 0:
        return np.zeros(frames)
    raw = start + velocity * np.arange(frames)
    folded = np.mod(raw, 2 * room)
    positions: np.ndarray = np.where(folded > room, 2 * room - folded, folded)
    return positions


def render_clip(
    digit: np.ndarray, frames: int, canvas: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """One clip (T, canvas, canvas) uint8 of `digit` (H, W uint8) moving and bouncing, and its
    motion parameters (speed in px/frame, direction in radians, start position)."""
    h, w = digit.shape
    speed = SPEEDS[int(rng.integers(len(SPEEDS)))] * canvas / 64
    angle = float(rng.uniform(0, 2 * math.pi))
    room_y, room_x = canvas - h, canvas - w
    y0, x0 = float(rng.uniform(0, max(room_y, 0))), float(rng.uniform(0, max(room_x, 0)))
    ys = np.rint(bounce(y0, speed * math.sin(angle), frames, room_y)).astype(int)
    xs = np.rint(bounce(x0, speed * math.cos(angle), frames, room_x)).astype(int)
    clip = np.zeros((frames, canvas, canvas), dtype=np.uint8)
    for t, (y, x) in enumerate(zip(ys, xs, strict=True)):
        clip[t, y : y + h, x : x + w] = digit
    return clip, {"speed": speed, "angle": angle, "y0": y0, "x0": x0}


def render_clips(
    digits: np.ndarray, labels: np.ndarray, per_class: int, frames: int = 16, canvas: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` clips of each label from distinct digit images (N, H, W) uint8; returns clips
    (M, T, canvas, canvas) uint8 and their labels (M,)."""
    rng = np.random.default_rng(seed)
    clips, clip_labels = [], []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        for i in rng.choice(pool, min(per_class, len(pool)), replace=False):
            clip, _ = render_clip(digits[i], frames, canvas, rng)
            clips.append(clip)
            clip_labels.append(int(label))
    return np.stack(clips), np.asarray(clip_labels, dtype=np.int64)
