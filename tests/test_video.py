"""Video: lossless decode round trips, frame-rate resampling, and Moving-MNIST-style clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DEVICE
from sklearn.datasets import load_digits

from simclr.errors import UserError
from simclr.video.moving_digits import SPEEDS, bounce, render_clip, render_clips

av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'simclr-torch[video]')")

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
    with pytest.raises(UserError, match=r"broken\.mkv"):
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


def test_every_frame_of_a_clip_gets_the_same_transform_and_clips_differ() -> None:
    import torch

    from simclr.augment import ImageAugment
    from simclr.video.augment import ClipAugment

    frame = torch.randint(0, 256, (8, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    videos = frame.unsqueeze(1).expand(8, 10, 3, 16, 16).contiguous()  # 8 videos of one repeated frame
    clips = ClipAugment(ImageAugment(size=12, blur_prob=0.5), clip_frames=4)(videos, torch.Generator().manual_seed(1))
    assert clips.shape == (8, 4, 3, 12, 12)
    assert torch.equal(clips, clips[:, :1].expand_as(clips))  # identical frames stay identical
    same_video = frame[:1].expand(8, 3, 16, 16).unsqueeze(1).expand(8, 10, 3, 16, 16).contiguous()
    views = ClipAugment(ImageAugment(size=12), clip_frames=4)(same_video, torch.Generator().manual_seed(2))
    assert len({v[0].sum().item() for v in views}) == 8  # but each clip draws its own transform


def test_clips_are_contiguous_runs_from_random_starts() -> None:
    import torch

    from simclr.augment import ImageAugment
    from simclr.video.augment import ClipAugment

    b, f, t = 64, 12, 5
    videos = torch.arange(f, dtype=torch.uint8).view(1, f, 1, 1, 1).expand(b, f, 1, 4, 4) * 20  # frame i = 20i
    identity = ImageAugment(size=4, min_scale=1.0, min_ratio=1.0, max_ratio=1.0, flip_prob=0.0,
                            color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    clips = ClipAugment(identity, t)(videos.contiguous(), torch.Generator().manual_seed(3))
    index = (clips[:, :, 0, 0, 0] * 255 / 20).round().long()  # (b, t) frame numbers
    assert torch.equal(index - index[:, :1], torch.arange(t).expand(b, t))  # consecutive frames
    starts = index[:, 0]
    assert starts.min() == 0 and starts.max() == f - t  # every start is possible


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18", "mc3_18"])
def test_video_resnets_map_clips_to_features(name: str) -> None:
    import torch

    from simclr.video.encoders import VideoResNet

    f = VideoResNet(name, in_channels=1)
    assert f(torch.rand(2, 4, 1, 16, 16)).shape == (2, f.out_dim) == (2, 512)


def test_frame_pooled_image_encoder_averages_frames() -> None:
    import torch

    from simclr.model import SmallCNN
    from simclr.video.encoders import FramePooled

    torch.manual_seed(0)
    f = FramePooled(SmallCNN(3, width=4)).eval()
    x = torch.rand(2, 3, 3, 8, 8)
    expected = torch.stack([f.image_encoder(x[i]).mean(0) for i in range(2)])
    torch.testing.assert_close(f(x), expected)


def test_video_folder_loads_labels_ids_skips_broken_and_caches(tmp_path: Path) -> None:
    from simclr.video.data import load_videos

    folder = tmp_path / "clips"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            write_video(folder / label / f"v{i}.mkv", random_clip(frames=5 + i, seed=i))
    (folder / "b" / "broken.mp4").write_bytes(b"junk" * 50)
    cache = tmp_path / "cache"
    data = load_videos(str(folder), size=8, frames=6, cache_dir=str(cache))
    assert data.inputs.shape == (4, 6, 3, 8, 8) and data.inputs.dtype == torch_uint8()
    assert data.labels is not None and data.labels.tolist() == [0, 0, 1, 1] and data.classes == ["a", "b"]
    assert data.ids == ["a/v0.mkv", "a/v1.mkv", "b/v0.mkv", "b/v1.mkv"]
    assert [Path(p).name for p, _ in data.skipped] == ["broken.mp4"]
    again = load_videos(str(folder), size=8, frames=6, cache_dir=str(cache))
    assert again.ids == data.ids and np.array_equal(again.inputs.numpy(), data.inputs.numpy())
    # a 5-frame video is looped to 6 frames: frame 5 is frame 0
    assert np.array_equal(data.inputs[0, 5].numpy(), data.inputs[0, 0].numpy())


def torch_uint8() -> object:
    import torch

    return torch.uint8


def digit_clip_folder(root: Path, classes: int = 3, per_class: int = 8, frames: int = 6, canvas: int = 16) -> Path:
    """Moving-digit clips from scikit-learn's 8×8 digits (always available), written losslessly
    as `root/<digit>/clip_<i>.mkv`."""
    digits = load_digits()
    keep = digits.target < classes
    images = (digits.images[keep] * 16).clip(0, 255).astype(np.uint8)
    clips, labels = render_clips(images, digits.target[keep], per_class, frames, canvas, seed=0)
    for i, (clip, label) in enumerate(zip(clips, labels, strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        write_video(root / str(label) / f"clip_{i:03d}.mkv", clip)
    return root


def run_cli(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    from simclr.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


def test_detect_video_files_and_folders(tmp_path: Path) -> None:
    from simclr.modality import detect

    assert [detect(f"clip{s}") for s in (".mp4", ".AVI", ".mkv", ".mov", ".webm")] == ["video"] * 5
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a.mp4", "b.webm", "notes.txt"):
        (flat / name).write_bytes(b"")
    nested = tmp_path / "nested"
    for label in ("cat", "dog"):
        (nested / label).mkdir(parents=True)
        (nested / label / "x.mov").write_bytes(b"")
    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    for name in ("a.png", "b.jpg", "c.mp4"):
        (images / "cat" / name).write_bytes(b"")
    assert (detect(str(flat)), detect(str(nested)), detect(str(images)), detect("digits")) == (
        "video", "video", "image", "image")


def test_cli_end_to_end_on_digit_clips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import json

    import torch

    folder = digit_clip_folder(tmp_path / "clips")
    (folder / "1" / "broken.mp4").write_bytes(b"not a video" * 20)  # one bad file among good ones
    out = tmp_path / "run"
    video = ["video.encoder=small_cnn", "video.frames=6", "video.clip_frames=4", "video.size=16", "data.channels=1"]
    code, err = run_cli("train", "--data", str(folder), "--epochs", "1", "--batch-size", "8", "--out", str(out),
                        *video, f"data.cache_dir={tmp_path / 'cache'}", "threads=1", TEST_DEVICE,
                        "eval_finetune=false", "eval_knn_k=5", "report=false")
    assert code == 0, err[-3000:]
    assert "1 video file skipped (undecodable): 1/broken.mp4" in caplog.text and "Traceback" not in err
    listed = (out / "skipped_files.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].split("\t")[0].endswith("1/broken.mp4")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["modality"] == "video" and state["input_shape"] == [6, 1, 16, 16]
    results = json.loads((out / "eval.json").read_text())
    assert {"simclr", "random_init", "raw_pixels", "supervised"} <= results.keys()
    assert "few_shot_5" in results["raw_pixels"]
    # The pixel baseline's kNN is scikit-learn's (k = 5, votes exp(cosine / 0.1)) on the central
    # 4-frame clip of each 6-frame video of the run's split, flattened.
    from sklearn.neighbors import KNeighborsClassifier

    from simclr.config import load_config
    from simclr.experiment import load_datasets
    from simclr.modality import get

    train, test = load_datasets(load_config(out / "config.yaml"), get("video"))
    assert train.labels is not None and test is not None and test.labels is not None
    xtr, xte = (part.inputs[:, 1:5].flatten(1).float().numpy() / 255 for part in (train, test))
    knn = KNeighborsClassifier(5, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.1))
    expected = knn.fit(xtr, train.labels.numpy()).score(xte, test.labels.numpy())
    assert results["raw_pixels"]["knn"] == pytest.approx(expected, abs=1e-9)
    code, err = run_cli("eval", str(out), "--no-finetune", "eval_knn_k=5", "video.eval_clips=2")
    assert code == 0, err[-3000:]
    again = json.loads((out / "eval.json").read_text())
    assert isinstance(again["simclr"]["linear"], float)
    assert again["raw_pixels"] == results["raw_pixels"]  # the run's own data and split, read again
    code, err = run_cli("embed", str(out), "--data", str(folder), "--out", str(tmp_path / "h.npz"))
    assert code == 0, err[-2000:]
    h = np.load(tmp_path / "h.npz")
    assert h["embeddings"].shape == (24, 256) and h["ids"][0] == "0/clip_000.mkv" and h["labels"][-1] == 2
    assert run_cli("export", str(out), "--format", "safetensors")[0] == 0 and (out / "encoder.safetensors").is_file()
    code, err = run_cli("export", str(out), "--format", "onnx")
    assert code == 2 and err.strip().count("\n") == 0 and "safetensors" in err
    assert run_cli("report", str(out))[0] == 0 and (out / "augmentations.png").is_file()
    assert "embedding_map.png" in (out / "report.html").read_text()


def test_cli_trains_evaluates_and_embeds_with_r3d_18(tmp_path: Path) -> None:
    """The 3-D ResNet through `simclr train` (pretraining, its evaluation) and `simclr embed`, at
    16 px × 4-frame clips (4 s on one CPU core): the run's encoder is torchvision's r3d_18,
    3-D convolutions included, and embeds each stored video's central clip as 512 features."""
    import json

    import torch
    from safetensors.torch import load_file

    folder = digit_clip_folder(tmp_path / "clips")
    out = tmp_path / "run"
    video = ["video.encoder=r3d_18", "video.frames=6", "video.clip_frames=4", "video.size=16", "data.channels=1"]
    code, err = run_cli("train", "--data", str(folder), "--epochs", "1", "--batch-size", "8", "--out", str(out),
                        *video, f"data.cache_dir={tmp_path / 'cache'}", "threads=1", TEST_DEVICE,
                        "eval_finetune=false", "eval_knn_k=5", "report=false")
    assert code == 0, err[-3000:]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["modality"] == "video" and state["input_shape"] == [6, 1, 16, 16] and state["progress"]["step"] >= 1
    weights = load_file(out / "encoder.safetensors")
    convs = [v for k, v in weights.items() if k.endswith("weight") and v.dim() == 5]
    assert len(convs) == 20 and sum(v.shape[1] == 1 for v in convs) == 1  # r3d_18: 20 3-D convs, a 1-channel stem
    assert {"simclr", "random_init", "raw_pixels"} <= json.loads((out / "eval.json").read_text()).keys()
    code, err = run_cli("embed", str(out), "--data", str(folder), "--out", str(tmp_path / "h.npz"))
    assert code == 0, err[-2000:]
    assert np.load(tmp_path / "h.npz")["embeddings"].shape == (24, 512)


def test_modality_views_are_clips_with_one_transform_per_clip() -> None:
    import torch

    from simclr.config import load_config
    from simclr.modality import get

    cfg = load_config(None, ["video.frames=10", "video.clip_frames=4", "video.size=12"])
    augment = get("video").build_augment(cfg, [10, 3, 12, 12])
    frame = torch.randint(0, 256, (6, 3, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    videos = frame.unsqueeze(1).expand(6, 10, 3, 12, 12).contiguous()  # each video one repeated frame
    x1, x2 = augment(videos, torch.Generator().manual_seed(1)), augment(videos, torch.Generator().manual_seed(2))
    assert x1.shape == (6, 4, 3, 12, 12)
    assert torch.equal(x1, x1[:, :1].expand_as(x1)) and not torch.equal(x1, x2)


def test_clip_encoder_encodes_stored_videos_by_their_central_clips() -> None:
    import torch

    from simclr.model import SmallCNN
    from simclr.video.encoders import ClipEncoder, FramePooled

    torch.manual_seed(0)
    backbone = FramePooled(SmallCNN(1, width=4)).eval()
    x = torch.rand(2, 10, 1, 8, 8)
    centre = ClipEncoder(backbone, clip_frames=4)
    torch.testing.assert_close(centre(x), backbone(x[:, 3:7]))
    torch.testing.assert_close(centre(x[:, :4]), backbone(x[:, :4]))  # a training clip passes through
    three = ClipEncoder(backbone, clip_frames=4, eval_clips=3)
    assert three.clip_starts(10) == [0, 3, 6]
    torch.testing.assert_close(three(x), torch.stack([backbone(x[:, s : s + 4]) for s in (0, 3, 6)]).mean(0))


def test_an_image_run_imports_neither_av_nor_a_tokenizer() -> None:
    import subprocess
    import sys

    code = ("import sys; from simclr.config import load_config; from simclr.modality import resolve; "
            "m = resolve(load_config(None, [])); assert m.name == 'image', m.name; "
            "assert 'av' not in sys.modules and 'tokenizers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_finetuning_gives_each_video_one_crop_for_all_frames() -> None:
    import torch

    from simclr.augment import ImageAugment
    from simclr.finetune import FinetuneSettings, crop_flip, finetune_accuracy
    from simclr.model import SmallCNN
    from simclr.video.encoders import ClipEncoder, FramePooled

    frame = torch.randint(0, 256, (4, 1, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    videos = frame.unsqueeze(1).expand(4, 6, 1, 12, 12).contiguous()
    x = crop_flip(ImageAugment(size=12, min_scale=0.3), videos, torch.Generator().manual_seed(1))
    assert x.shape == (4, 6, 1, 12, 12) and torch.equal(x, x[:, :1].expand_as(x))
    # Videos go through fine-tuning and it fits them: dim clips (class 0) against bright ones
    # (class 1), scored on the same clips, reach 1.0; the untrained classifier (a zero head:
    # class 0 for all) scores 0.5.
    torch.manual_seed(0)
    encoder = ClipEncoder(FramePooled(SmallCNN(1, width=4)), clip_frames=4)
    labels = torch.tensor([0, 1, 0, 1])
    videos = videos // 4 + (labels * 160).view(-1, 1, 1, 1, 1).to(torch.uint8)
    accuracy = finetune_accuracy(encoder, videos, labels, videos, labels, settings=FinetuneSettings(min_steps=10,
                                                                                                     epochs=1))
    assert accuracy == 1.0


def test_cli_paired_clips_with_class_prompts(tmp_path: Path) -> None:
    """Video + text: clips of a labelled folder paired with captions made from its class names."""
    import json

    folder = digit_clip_folder(tmp_path / "clips")
    out = tmp_path / "run"
    video = ["video.encoder=small_cnn", "video.frames=6", "video.clip_frames=4", "video.size=16", "data.channels=1"]
    code, err = run_cli("train", "--data", str(folder), "--epochs", "1", "--batch-size", "8", "--out", str(out),
                        *video, "data.modality=paired", "paired.modalities=[video,text]",
                        "paired.templates=['a clip of the digit {}']", "text.width=16",
                        f"data.cache_dir={tmp_path / 'cache'}", "threads=1", TEST_DEVICE, "eval_finetune=false",
                        "eval_knn_k=5", "report=false", "paired.heldout_fraction=0.25")
    assert code == 0, err[-3000:]
    results = json.loads((out / "eval.json").read_text())
    assert {"paired", "random_init", "raw_pixels"} <= results.keys()
    row = results["paired"]
    assert all(isinstance(row[m], float) for m in ("v2t_r1", "zero_shot", "linear"))
    # 6 held-out clips, 3 captions, each caption twice: every query has 2 partners among the 6
    # candidates, so one is always in the top 5, whatever the embeddings; counting only a clip's
    # own copy of the caption would miss some.
    assert row["v2t_r5"] == row["t2v_r5"] == 1.0
    assert row["text_linear"] > 0.5 and results["random_init"]["text_linear"] > 0.5  # captions name the class
    code, err = run_cli("embed", str(out), "--data", str(folder), "--out", str(tmp_path / "e.npz"))
    assert code == 0, err[-2000:]
    e = np.load(tmp_path / "e.npz")
    assert e["video_embeddings"].shape == (24, 256) and e["texts"][0] == "a clip of the digit 0"
    assert e["ids"][0] == "0/clip_000.mkv"


def test_cli_paired_manifest_of_clips_and_series(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Video + series from a manifest: each clip with the digit's horizontal position over time
    (its ink-weighted column centre per frame) written inline; a missing clip is skipped."""
    import json

    import torch

    from simclr.video.io import read_video

    folder = digit_clip_folder(tmp_path / "clips")
    rows = []
    for clip in sorted(folder.rglob("*.mkv")):
        frames, _ = read_video(clip)
        ink = frames[:, 0].astype(np.float64).sum(1)  # (T, W) ink per column
        centre = (ink * np.arange(ink.shape[1])).sum(1) / np.maximum(ink.sum(1), 1)
        rows.append(f"{clip.relative_to(tmp_path)},{' '.join(f'{c:.2f}' for c in centre)},{clip.parent.name}")
    rows.append("clips/0/missing.mkv,1 2 3,0")
    manifest = tmp_path / "clips.csv"
    manifest.write_text("video,series,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    video = ["video.encoder=small_cnn", "video.frames=6", "video.clip_frames=4", "video.size=16", "data.channels=1"]
    code, err = run_cli("train", "--data", str(manifest), "--epochs", "1", "--batch-size", "8", "--out", str(out),
                        *video, "data.modality=paired", "paired.modalities=[video,series]", "series.width=8",
                        f"data.cache_dir={tmp_path / 'cache'}", "threads=1", TEST_DEVICE, "eval_finetune=false",
                        "eval_knn_k=5", "report=false", "paired.heldout_fraction=0.25")
    assert code == 0, err[-3000:]
    assert "1 of 25 pairs left out" in caplog.text and "missing.mkv" in caplog.text
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["input_shape"] == [6, 1, 16, 16]
    results = json.loads((out / "eval.json").read_text())
    row = results["paired"]
    assert all(isinstance(row[m], float) for m in ("v2s_r1", "s2v_r5", "linear", "series_linear"))
    for d in ("v2s", "s2v"):  # recall only grows with k
        assert row[f"{d}_r1"] <= row[f"{d}_r5"] <= row[f"{d}_r10"]
    assert "zero_shot" not in results["paired"]
    code, err = run_cli("embed", str(out), "--data", str(manifest), "--out", str(tmp_path / "e.npz"))
    assert code == 0, err[-2000:]
    e = np.load(tmp_path / "e.npz")
    assert e["video_embeddings"].shape == (24, 256) and e["series_shared"].shape == (24, 128)
    assert e["ids"][0] == "clips/0/clip_000.mkv" and "texts" not in e
