"""Time-series sources: UCR/UEA `.ts` files (one, or a folder with a _TRAIN/_TEST pair), `.npz`
arrays (N, C, T) and CSV (one series per row, or long format with an `id` column).

Unequal lengths are resampled (linear interpolation) to one length T, the longest series unless
`length` says otherwise. Why resampling rather than padding with a mask: the crop-and-resize
augmentation, the convolutional encoders, the 1-NN Euclidean baseline and the exported encoder
all then see one dense (N, C, T) array with no mask to carry around, and for the archive's
variable-length sets (gestures, pen strokes, vowels) a series is one whole event whose shape,
not its duration, is the signal; the archive's own `_eq` versions make the same choice.
Missing values (`?`, NaN) inside a series are filled by linear interpolation; trailing ones end it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from simclr.data.arrays import check_declared_sizes
from simclr.data.columns import LABEL_COLUMNS, first_column, numeric_field, pick_column
from simclr.errors import UserError

ID_NAMES = ("id", "series", "case", "series_id", "sample")
TIME_NAMES = ("time", "t", "timestamp", "step")


@dataclass
class SeriesData:
    """A set of float series, all C channels × T steps, optionally labelled."""

    inputs: torch.Tensor  # (N, C, T) float32
    labels: torch.Tensor | None  # (N,) int64
    name: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] | None = None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def channels(self) -> int:
        return int(self.inputs.shape[1])

    @property
    def length(self) -> int:
        return int(self.inputs.shape[2])

    def subset(self, index: np.ndarray | torch.Tensor) -> SeriesData:
        idx = torch.as_tensor(index, dtype=torch.long)
        labels = self.labels[idx] if self.labels is not None else None
        return SeriesData(self.inputs[idx], labels, self.name, list(self.skipped), self.classes)


Raw = tuple[list[np.ndarray], list[str] | None]  # series (C, T_i) each, string labels or None


def _clean(channel: np.ndarray) -> np.ndarray:
    """Trailing NaNs end the series; inner NaNs are interpolated from their neighbours."""
    ok = np.flatnonzero(~np.isnan(channel))
    if len(ok) == 0:
        return np.zeros(1)
    channel = channel[: ok[-1] + 1]
    if len(ok) < len(channel):
        channel = np.interp(np.arange(len(channel)), ok, channel[ok])
    return channel


def resample(series: list[np.ndarray], length: int) -> np.ndarray:
    """Each (C, T_i) series, channel by channel, linearly resampled to `length` → (N, C, length)."""
    out = np.empty((len(series), series[0].shape[0], length), dtype=np.float32)
    grid = np.linspace(0, 1, length)
    for i, s in enumerate(series):
        for c, channel in enumerate(s):
            channel = _clean(np.asarray(channel, dtype=np.float64))
            out[i, c] = np.interp(grid, np.linspace(0, 1, len(channel)), channel) if len(channel) > 1 else channel[0]
    return out


def read_ts(path: Path) -> Raw:
    """A UCR/UEA `.ts` file: `@` header lines, then one case per line, channels separated by
    `:`, values by `,`, the class label last when `@classLabel true`."""
    series, labels, in_data, labelled = [], [], False, False
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                key, _, value = line.partition(" ")
                key = key.lower()
                if key == "@classlabel":
                    labelled = value.strip().lower().startswith("true")
                elif key == "@timestamps" and value.strip().lower() == "true":
                    raise UserError(f"{path}: .ts files with time stamps are not supported")
                in_data = key == "@data"
                continue
            fields = line.split(":")
            if labelled:
                labels.append(fields.pop().strip())
            try:
                chans = [[float(v) if v.strip() not in ("?", "") else np.nan for v in c.split(",")] for c in fields]
            except ValueError:
                raise UserError(f"{path}:{number}: a value is not a number") from None
            longest = max(len(c) for c in chans)  # channels of one case may differ: pad with NaN (trimmed later)
            series.append(np.array([c + [np.nan] * (longest - len(c)) for c in chans]))
    if not in_data:
        raise UserError(f"{path}: not a .ts file (no @data line)")
    if not series:
        raise UserError(f"{path}: no series after @data")
    if len({s.shape[0] for s in series}) > 1:
        raise UserError(f"{path}: cases have different numbers of channels")
    return series, labels if labelled else None


def _array_pair(z: np.lib.npyio.NpzFile, path: Path) -> tuple[Raw, Raw | None]:
    keys = {k.lower(): k for k in z.files}

    def series_of(key: str) -> list[np.ndarray]:
        return list(_as3d(z[key], path))

    def labels_of(key: str | None, n: int) -> list[str] | None:
        if key is None:
            return None
        y = np.asarray(z[key]).reshape(-1)
        if len(y) != n:
            raise UserError(f"{path}: {len(y)} labels for {n} series")
        return [str(v) for v in y]

    if "x_train" in keys and "x_test" in keys:
        train = series_of(keys["x_train"])
        test = series_of(keys["x_test"])
        return (train, labels_of(keys.get("y_train"), len(train))), (test, labels_of(keys.get("y_test"), len(test)))
    x_key = next((keys[k] for k in ("series", "x", "data", "inputs") if k in keys), None)
    if x_key is None:
        arrays = [k for k in z.files if z[k].ndim in (2, 3) and np.issubdtype(z[k].dtype, np.number)]
        if len(arrays) != 1:
            raise UserError(f"{path}: name the series array 'x' (N×C×T) and the labels 'y'; found {z.files}")
        x_key = arrays[0]
    x = series_of(x_key)
    y_key = next((keys[k] for k in ("y", "labels", "label", "targets") if k in keys), None)
    return (x, labels_of(y_key, len(x))), None


def read_csv(path: Path, label_column: str | None) -> Raw:
    """One series per row (an optional header; the label column named `label_column`, `first` or
    `last`, or one of simclr.data.columns.LABEL_COLUMNS), or long format: a header with an id
    column (id/series/case), rows grouped by it and ordered by a time column when there is one,
    every other numeric column a channel."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(v.strip() for v in r)]
    if not rows:
        raise UserError(f"{path}: empty CSV")
    header = rows[0] if not all(numeric_field(v) for v in rows[0]) else None
    names = header or []
    body = rows[1:] if header else rows
    if label_column in ("first", "last"):
        label_at: int | None = 0 if label_column == "first" else len(rows[0]) - 1
    else:
        label_at = pick_column(names, label_column, LABEL_COLUMNS, path, "series.label_column")

    def number(v: str, line: int) -> float:
        try:
            return float(v) if v.strip() not in ("", "?") else np.nan
        except ValueError:
            raise UserError(f"{path}:{line}: {v!r} is not a number") from None

    id_at = first_column(names, ID_NAMES)
    if id_at is None:  # wide: one univariate series per row
        series, labels = [], []
        for line, row in enumerate(body, 2 if header else 1):
            values = [number(v, line) for i, v in enumerate(row) if i != label_at]
            series.append(np.array([values]))
            if label_at is not None:
                labels.append(row[label_at].strip())
        return series, labels if label_at is not None else None
    assert header is not None
    time_at = first_column(names, TIME_NAMES)
    channels = [i for i in range(len(header)) if i not in (id_at, label_at, time_at)]
    groups: dict[str, list[tuple[float, list[float], str | None]]] = {}
    for line, row in enumerate(body, 2):
        t = number(row[time_at], line) if time_at is not None else float(len(groups.get(row[id_at], [])))
        label = row[label_at].strip() if label_at is not None else None
        groups.setdefault(row[id_at], []).append((t, [number(row[c], line) for c in channels], label))
    series, labels = [], []
    for key, points in groups.items():
        points.sort(key=lambda p: p[0])
        series.append(np.array([p[1] for p in points]).T)  # (C, T_i)
        if label_at is not None:
            if len({p[2] for p in points}) > 1:
                raise UserError(f"{path}: series {key!r} has more than one label")
            labels.append(str(points[0][2]))
    return series, labels if label_at is not None else None


def _label_key(v: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order (2 before 10), then the others alphabetically."""
    try:
        return 0, float(v), v
    except ValueError:
        return 1, 0.0, v


def read_source(source: str, label_column: str | None) -> tuple[Raw, Raw | None, str]:
    """(series, the official test split if the source has one, a name)."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"time-series source not found: {source}")
    if path.is_dir():
        trains, tests = sorted(path.glob("*_TRAIN.ts")), sorted(path.glob("*_TEST.ts"))
        if len(trains) == 1 and len(tests) == 1:
            return read_ts(trains[0]), read_ts(tests[0]), trains[0].name[: -len("_TRAIN.ts")]
        files = sorted(path.glob("*.ts"))
        if len(files) == 1:
            return read_ts(files[0]), None, files[0].stem
        raise UserError(f"{path}: expected one <Name>_TRAIN.ts and one <Name>_TEST.ts (or one .ts), "
                        f"found {', '.join(f.name for f in files) or 'none'}")
    suffix = path.suffix.lower()
    if suffix == ".ts":
        return read_ts(path), None, path.stem
    if suffix in (".npz", ".npy"):
        check_declared_sizes(path)  # before np.load allocates what a header claims
        if suffix == ".npy":
            return (list(_as3d(np.load(path, allow_pickle=False), path)), None), None, path.stem
        with np.load(path, allow_pickle=False) as z:
            first, second = _array_pair(z, path)
        return first, second, path.stem
    if suffix in (".csv", ".tsv", ".txt"):
        return read_csv(path, label_column), None, path.stem
    if suffix == ".json":
        raise UserError(f"{path}: JSON series are not supported; use .ts, .npz or .csv")
    raise UserError(f"{path}: not a time-series file (.ts, .npz, .npy, .csv, or a folder of .ts)")


def _as3d(x: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.number):
        raise UserError(f"{path}: series must be numbers, got dtype {x.dtype}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, None, :]  # univariate (N, T)
    if x.ndim != 3:
        raise UserError(f"{path}: expected N×C×T or N×T, got shape {x.shape}")
    return x


def to_data(raw: Raw, name: str, length: int, classes: list[str] | None) -> SeriesData:
    series, labels = raw
    y = None
    if labels is not None:
        assert classes is not None
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(labels) - index.keys())
        if unknown:
            raise UserError(f"{name}: labels {unknown[:5]} are not among the training classes")
        y = torch.tensor([index[v] for v in labels], dtype=torch.long)
    return SeriesData(torch.from_numpy(resample(series, length)), y, name, [], classes)


def load_series(
    source: str, length: int | None = None, label_column: str | None = None,
    like: SeriesData | None = None,
) -> tuple[SeriesData, SeriesData | None]:
    """A series source as (data, official test split or None), resampled to `length` (default:
    the longest series of the source); `like` (data already loaded) fixes the length, the
    channels and the class names a second source must share."""
    first, second, name = read_source(source, label_column)
    every = first[0] + (second[0] if second else [])
    channels = {s.shape[0] for s in every}
    if len(channels) > 1:
        raise UserError(f"{source}: series have different numbers of channels {sorted(channels)}")
    if like is not None:
        length = like.length
        if channels != {like.channels}:
            raise UserError(f"{source}: {channels.pop()} channels, but the encoder takes {like.channels}")
    length = length or max(len(_clean(np.asarray(c, dtype=np.float64))) for s in every for c in s)
    names = (first[1] or []) + (second[1] if second and second[1] else [])
    classes = like.classes if like is not None and like.classes else None
    if classes is None and names:
        classes = sorted(set(names), key=_label_key)
    data = to_data(first, name, length, classes)
    test = to_data(second, name, length, classes) if second else None
    return data, test

