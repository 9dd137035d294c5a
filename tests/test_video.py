"""Video: lossless decode round trips, frame-rate resampling, and Moving-MNIST-style clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from simclr.errors import UserError
from simclr.video.moving_digits import SPEEDS, bounce, render_clip, render_clips

av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'simclr[video]')")

from simclr.video.io import read_video, write_video  # noqa: E402


def random_clip(frames: int = 6, channels: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, channels, size, size), dtype=np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_lossless_round_trip(tmp_path: Path, channels: int) -> None:
    clip = random_clip(channels=channels)
    path = write_video(tmp_path / "clip.mkv", clip, fps=10)
    frames, rate = read_video(path, channels=channels)
    assert rate == 10 and frames.shape == clip.shape and np.array_equal(frames, clip)


def test_frame_rate_resampling_and_frame_cap(tmp_path: Path) -> None:
    clip = np.stack([np.full((3, 8, 8), 10 * t, dtype=np.uint8) for t in range(20)])  # frame t has value 10t
    path = write_video(tmp_path / "ramp.mkv", clip, fps=20)
    half, rate = read_video(path, fps=10)
    assert rate == 10 and [int(f[0, 0, 0]) for f in half] == [10 * t for t in range(0, 20, 2)]
    capped, _ = read_video(path, fps=10, max_frames=4)
    assert [int(f[0, 0, 0]) for f in capped] == [0, 20, 40, 60]
    first, _ = read_video(path, max_frames=3)
    assert len(first) == 3


def test_size_takes_the_central_square(tmp_path: Path) -> None:
    clip = np.zeros((2, 3, 8, 16), dtype=np.uint8)
    clip[:, :, :, 4:12] = 200  # the central 8×8 square is bright, the sides dark
    frames, _ = read_video(write_video(tmp_path / "wide.mkv", clip), size=4)
    assert frames.shape == (2, 3, 4, 4) and frames.min() == 200


def test_broken_file_is_a_user_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mkv"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(UserError, match="broken.mkv"):
        read_video(bad)


def test_bounce_stays_inside_and_reflects() -> None:
    pos = bounce(2.0, 3.0, 40, room=10.0)
    assert pos.min() >= 0 and pos.max() <= 10
    steps = np.abs(np.diff(pos))
    assert np.all(steps <= 3 + 1e-9) and np.any(np.sign(np.diff(pos)) < 0)  # it turned back


def test_rendered_clips_keep_the_digit_and_move_it() -> None:
    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    clip, motion = render_clip(images[0], frames=12, canvas=32, rng=np.random.default_rng(1))
    assert clip.shape == (12, 32, 32) and motion["speed"] in [s * 32 / 64 for s in SPEEDS]
    assert all(int(frame.sum()) == int(images[0].sum()) for frame in clip)  # whole digit in every frame
    assert not np.array_equal(clip[0], clip[-1])
    clips, labels = render_clips(images, digits.target, per_class=3, frames=4, canvas=24)
    assert clips.shape == (30, 4, 24, 24) and np.bincount(labels).tolist() == [3] * 10
