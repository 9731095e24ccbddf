"""Data loading on the real files: verification, corrupt input, source order, download, splits."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline import data

LABELS = "t10k-labels-idx1-ubyte"


@pytest.fixture
def copy_of(official_dir, tmp_path):
    """A writable directory holding the four official files."""
    target = tmp_path / "copy"
    shutil.copytree(official_dir, target)
    return target


def test_official_files_load_with_expected_shapes(official_dir):
    splits = data.load_official(official_dir)
    assert splits["train"].images.shape == (60_000, 28, 28)
    assert splits["test"].images.shape == (10_000, 28, 28)
    assert np.bincount(splits["test"].labels).tolist() == [1000] * 10


def test_truncated_gz_names_the_file(copy_of):
    path = copy_of / f"{LABELS}.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataError, match=f"{LABELS}.gz: cannot decompress"):
        data.load_official(copy_of)


def test_flipped_byte_fails_the_checksum(copy_of):
    path = copy_of / f"{LABELS}.gz"
    payload = bytearray(gzip.decompress(path.read_bytes()))
    payload[100] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(data.DataError, match=f"{LABELS}.gz: SHA-256 of the decompressed bytes"):
        data.load_official(copy_of)


def test_wrong_magic_number_is_named():
    payload = (2051).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3)
    with pytest.raises(data.DataError, match=r"labels\.idx: IDX magic number is 2051, expected 2049"):
        data.parse_idx(payload, data.LABELS_MAGIC, Path("labels.idx"))


def test_short_body_is_named():
    payload = (2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes(3)
    with pytest.raises(data.DataError, match=r"labels\.idx: header promises shape"):
        data.parse_idx(payload, data.LABELS_MAGIC, Path("labels.idx"))


def test_configured_source_comes_first_and_must_be_complete(copy_of, tmp_path):
    assert data.find_source(str(copy_of), "http://unused/") == copy_of
    (copy_of / f"{LABELS}.gz").unlink()
    with pytest.raises(data.DataError, match=f"missing {LABELS}.gz"):
        data.load_official(copy_of)
    with pytest.raises(data.DataError, match=r"data\.source"):
        data.find_source(str(tmp_path / "nowhere"), "http://unused/")


def test_debian_dir_comes_before_the_keras_cache(copy_of, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(copy_of, cache)
    assert data.find_source(None, "http://unused/", debian_dir=copy_of, cache_dir=cache) == copy_of
    assert data.find_source(None, "http://unused/", debian_dir=tmp_path / "absent", cache_dir=cache) == cache


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on loopback serving a directory, like the official mirror."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_fetches_and_verifies_missing_files(official_dir, tmp_path, file_server):
    served, url = file_server
    for path in official_dir.iterdir():
        shutil.copy(path, served)
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(official_dir / f"{LABELS}.gz", cache)  # one already cached: not fetched again
    found = data.find_source(None, url, debian_dir=tmp_path / "absent", cache_dir=cache)
    assert found == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in data.SHA256)
    assert data.load_official(cache)["train"].labels.shape == (60_000,)


def test_corrupt_download_is_refused_and_leaves_nothing(official_dir, tmp_path, file_server):
    served, url = file_server
    for path in official_dir.iterdir():
        shutil.copy(path, served)
    (served / f"{LABELS}.gz").write_bytes(gzip.compress(b"not the labels"))
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match=f"{LABELS}.gz: downloaded file rejected"):
        data.find_source(None, url, debian_dir=tmp_path / "absent", cache_dir=cache)
    assert not (cache / f"{LABELS}.gz").exists()
    assert not list(cache.glob(".*partial"))


def test_unreachable_mirror_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="download failed"):
        data.find_source(None, "http://127.0.0.1:9/", debian_dir=tmp_path / "a", cache_dir=tmp_path / "c")


def test_split_is_seeded_disjoint_and_sized(official_dir):
    official = data.load_official(official_dir)
    first = data.split_data(official, val_size=500, train_size=1000, test_size=300, seed=7)
    again = data.split_data(official, val_size=500, train_size=1000, test_size=300, seed=7)
    other = data.split_data(official, val_size=500, train_size=1000, test_size=300, seed=8)
    assert [len(first[s].labels) for s in data.SPLITS] == [1000, 500, 300]
    assert data.digest(first) == data.digest(again) != data.digest(other)
    train_rows = {r.tobytes() for r in first["train"].images}
    assert not any(r.tobytes() in train_rows for r in first["val"].images)


def test_prepared_round_trip(official_dir, tmp_path):
    splits = data.split_data(
        data.load_official(official_dir), val_size=10, train_size=20, test_size=5, seed=0
    )
    data.save_prepared(splits, tmp_path / "prepared.npz")
    loaded = data.load_prepared(tmp_path / "prepared.npz")
    assert data.digest(loaded) == data.digest(splits)
    x = data.to_model_input(loaded["test"].images)
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
