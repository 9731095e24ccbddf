"""Fashion-MNIST: find the official IDX files, verify them, split them, store them."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.params import Data, PipelineError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# SHA-256 of the *decompressed* bytes: Debian recompresses the .gz files.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
OFFICIAL_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic numbers: 0x00000803 for uint8 rank-3 images, 0x00000801 for uint8 labels.
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
GZIP_MAGIC = b"\x1f\x8b"
SPLITS = ("train", "val", "test")


class DataError(PipelineError):
    """A data file is missing, corrupt or inconsistent; the message names it."""


@dataclass(frozen=True)
class Split:
    """Images `(n, 28, 28)` uint8 and labels `(n,)` uint8 of one split."""

    images: np.ndarray
    labels: np.ndarray


def keras_cache_dir() -> Path:
    """Where `keras.datasets.fashion_mnist` keeps its download."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets" / "fashion-mnist"


def _file_in(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def read_verified(path: Path, name: str | None = None) -> bytes:
    """Decompressed bytes of one IDX file, checked against its known SHA-256.

    `name` is the official file name when `path` is a temporary download.
    """
    name = name or path.name.removesuffix(".gz")
    if name not in SHA256:
        raise DataError(f"{path}: not a Fashion-MNIST file name (expected one of {sorted(SHA256)})")
    try:
        raw = path.read_bytes()
        payload = gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); the file is truncated or corrupt") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != SHA256[name]:
        raise DataError(f"{path}: SHA-256 of the decompressed bytes is {digest}, expected {SHA256[name]}")
    return payload


def parse_idx(payload: bytes, magic: int, source: Path) -> np.ndarray:
    """An IDX payload as a uint8 array; `source` only names the file in errors."""
    rank = magic & 0xFF
    header = np.frombuffer(payload[: 4 * (rank + 1)], dtype=">u4")
    if len(header) != rank + 1 or header[0] != magic:
        found = int(header[0]) if len(header) else None
        raise DataError(f"{source}: IDX magic number is {found}, expected {magic}")
    shape = tuple(int(n) for n in header[1:])
    body = np.frombuffer(payload, dtype=np.uint8, offset=4 * (rank + 1))
    if body.size != int(np.prod(shape)):
        raise DataError(f"{source}: header promises shape {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def load_official(directory: Path) -> dict[str, Split]:
    """The verified official train and test splits from one directory."""
    splits = {}
    for split, (images_name, labels_name) in OFFICIAL_SPLITS.items():
        images_path, labels_path = _file_in(directory, images_name), _file_in(directory, labels_name)
        for name, path in ((images_name, images_path), (labels_name, labels_path)):
            if path is None:
                raise DataError(f"{directory}: missing {name}.gz")
        images = parse_idx(read_verified(images_path), IMAGES_MAGIC, images_path)
        labels = parse_idx(read_verified(labels_path), LABELS_MAGIC, labels_path)
        splits[split] = paired(images, labels, images_path=images_path, labels_path=labels_path)
    return splits


def paired(images: np.ndarray, labels: np.ndarray, *, images_path: Path, labels_path: Path) -> Split:
    """Images with their labels, which must be as many."""
    if len(images) != len(labels):
        raise DataError(f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels")
    return Split(images=images, labels=labels)


def download(url: str, directory: Path) -> None:
    """Fetch the official files missing from `directory`, each verified before it lands."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in SHA256:
        if _file_in(directory, name) is not None:
            continue
        target = directory / f"{name}.gz"
        address = f"{url.rstrip('/')}/{name}.gz"
        handle, partial = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(address, timeout=60) as response:
                shutil.copyfileobj(response, out)
            read_verified(Path(partial), name)
            os.replace(partial, target)
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(f"{address}: download failed ({exc})") from None
        except DataError as exc:
            raise DataError(f"{address}: downloaded file rejected: {exc}") from None
        finally:
            Path(partial).unlink(missing_ok=True)


def find_source(
    configured: str | None,
    url: str,
    *,
    debian_dir: Path = DEBIAN_DIR,
    cache_dir: Path | None = None,
) -> Path:
    """The first complete source: `data.source`, Debian's package, the Keras cache, a download."""
    if configured is not None:
        directory = Path(configured).expanduser()
        if not directory.is_dir():
            raise DataError(f"data.source: {directory} is not a directory")
        return directory
    cache_dir = cache_dir or keras_cache_dir()
    for directory in (debian_dir, cache_dir):
        if all(_file_in(directory, name) for name in SHA256):
            return directory
    download(url, cache_dir)
    return cache_dir


def split_data(
    official: dict[str, Split], *, val_size: int, train_size: int | None, test_size: int | None, seed: int
) -> dict[str, Split]:
    """Hold a seeded validation split out of the training images; optionally subsample."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(official["train"].labels))
    val, train = order[:val_size], order[val_size:]
    if train_size is not None:
        train = train[:train_size]
    test = np.arange(len(official["test"].labels))
    if test_size is not None:
        test = np.sort(rng.permutation(test)[:test_size])
    chosen = {"train": ("train", np.sort(train)), "val": ("train", np.sort(val)), "test": ("test", test)}
    return {
        name: Split(official[source].images[rows], official[source].labels[rows])
        for name, (source, rows) in chosen.items()
    }


def load_splits(config: Data, *, seed: int) -> tuple[Path, dict[str, Split]]:
    """The verified official files for `config`, and their seeded train/validation/test split."""
    source = find_source(config.source, config.url)
    splits = split_data(
        load_official(source),
        val_size=config.val_size,
        train_size=config.train_size,
        test_size=config.test_size,
        seed=seed,
    )
    return source, splits


def digest(splits: dict[str, Split]) -> str:
    """SHA-256 over every prepared array, in a fixed order."""
    sha = hashlib.sha256()
    for name in SPLITS:
        sha.update(np.ascontiguousarray(splits[name].images).tobytes())
        sha.update(np.ascontiguousarray(splits[name].labels).tobytes())
    return sha.hexdigest()


def save_prepared(splits: dict[str, Split], path: Path) -> None:
    """Write all splits to one `.npz` (uint8, no pickles)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name in SPLITS:
        arrays[f"{name}_images"] = splits[name].images
        arrays[f"{name}_labels"] = splits[name].labels
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(partial, path)


def load_prepared(path: Path) -> dict[str, Split]:
    """Read the splits written by `save_prepared`."""
    with np.load(path, allow_pickle=False) as arrays:
        return {name: Split(arrays[f"{name}_images"], arrays[f"{name}_labels"]) for name in SPLITS}


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 `(n, 28, 28)` -> float32 `(n, 28, 28, 1)` in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[..., None]
