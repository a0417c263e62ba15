"""Normal-data loading: every file format, reshaping, and one clear line for every bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from helpers import line_data

from aeaudit import InputError, load_data
from aeaudit.data import parse_shape, shape_samples

X = line_data(20, seed=1)


def _message(path, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        load_data(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


# --------------------------------------------------------------------------- formats
def test_npy_is_memory_mapped(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, X)
    arr = load_data(path)
    assert isinstance(arr, np.memmap)
    np.testing.assert_array_equal(arr, X)


def test_npz_single_array_and_data_key(tmp_path):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    np.savez(one, only=X)
    np.savez(two, normal=X, labels=np.arange(20))
    np.testing.assert_array_equal(load_data(one), X)
    np.testing.assert_array_equal(load_data(two, key="normal"), X)
    assert "--data-key" in _message(two)
    assert "no array 'missing'" in _message(two, key="missing")


@pytest.mark.parametrize(
    "name, delimiter, header",
    [
        ("plain.csv", ",", None),
        ("header.csv", ",", "a,b"),
        ("semi.csv", ";", "a;b"),
        ("tabs.tsv", "\t", None),
        ("tabs_header.tsv", "\t", "first\tsecond"),
        ("spaces.txt", " ", None),
    ],
)
def test_numeric_tables(tmp_path, name, delimiter, header):
    path = tmp_path / name
    np.savetxt(path, X, delimiter=delimiter, header=header or "", comments="", fmt="%.8g")
    arr = load_data(path)
    assert arr.shape == X.shape
    np.testing.assert_allclose(arr, X, rtol=1e-7)


def test_pt_tensor_and_dict(tmp_path):
    plain, keyed = tmp_path / "x.pt", tmp_path / "d.pt"
    torch.save(torch.as_tensor(X), plain)
    torch.save({"train": torch.as_tensor(X), "test": torch.zeros(3, 2)}, keyed)
    np.testing.assert_array_equal(load_data(plain), X)
    np.testing.assert_array_equal(load_data(keyed, key="train"), X)
    assert "--data-key" in _message(keyed)
    torch.save(torch.as_tensor(X).to(torch.bfloat16), plain)
    assert load_data(plain).dtype == np.float32


def test_arrays_in_memory_and_one_feature():
    np.testing.assert_array_equal(load_data(torch.as_tensor(X)), X)
    assert load_data(np.arange(5.0)).shape == (5, 1)  # a flat vector is five one-feature samples


# --------------------------------------------------------------------------- reshaping
def test_reshape_to_the_model_input():
    flat = np.zeros((4, 784), np.float32)
    shaped, shape = shape_samples(flat, (1, 28, 28))
    assert shaped.shape == (4, 1, 28, 28) and shape == (1, 28, 28)
    same, shape = shape_samples(flat, None)
    assert same is flat and shape == (784,)
    with pytest.raises(InputError, match=r"shape \(784,\) \(784 values\) but the model takes \(1, 28, 27\)"):
        shape_samples(flat, (1, 28, 27))


def test_parse_shape():
    assert parse_shape("1,28,28") == (1, 28, 28)
    assert parse_shape("28x28") == (28, 28)
    assert parse_shape(None) is None
    for bad in ("1,a", "0,5", "-1,4"):
        with pytest.raises(InputError, match="--input-shape"):
            parse_shape(bad)


# --------------------------------------------------------------------------- bad inputs: one clear line each
def _write_bad(tmp_path, kind):
    """Write a bad data file of ``kind``; return ``(path, words the message must contain)``."""
    p = tmp_path
    if kind == "nan":
        bad = X.copy()
        bad[7, 1] = np.nan
        np.save(p / "nan.npy", bad)
        return p / "nan.npy", "sample 7 holds NaN or inf"
    if kind == "inf":
        bad = X.copy()
        bad[3, 0] = np.inf
        np.savetxt(p / "inf.csv", bad, delimiter=",")
        return p / "inf.csv", "sample 3 holds NaN or inf"
    if kind == "empty_file":
        (p / "empty.csv").write_text("")
        return p / "empty.csv", "is empty"
    if kind == "no_samples":
        np.save(p / "none.npy", np.zeros((0, 2), np.float32))
        return p / "none.npy", "no samples"
    if kind == "header_only":
        (p / "head.csv").write_text("a,b\n")
        return p / "head.csv", "header but no data rows"
    if kind == "non_numeric":
        (p / "words.csv").write_text("a,b\n1,2\n3,cat\n")
        return p / "words.csv", "non-numeric value 'cat'"
    if kind == "ragged":
        (p / "ragged.csv").write_text("1,2\n3\n")
        return p / "ragged.csv", "row 2 has 1 columns, expected 2"
    if kind == "strings":
        np.save(p / "str.npy", np.array([["a", "b"]] * 3))
        return p / "str.npy", "not numbers"
    if kind == "objects":
        np.save(p / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return p / "obj.npy", "Python objects"
    if kind == "truncated_npy":
        np.save(p / "t.npy", X)
        (p / "t.npy").write_bytes((p / "t.npy").read_bytes()[:140])
        return p / "t.npy", "truncated"
    if kind == "truncated_npz":
        np.savez(p / "t.npz", x=X)
        (p / "t.npz").write_bytes((p / "t.npz").read_bytes()[:100])
        return p / "t.npz", "truncated"
    if kind == "truncated_pt":
        torch.save(torch.as_tensor(X), p / "t.pt")
        (p / "t.pt").write_bytes((p / "t.pt").read_bytes()[:200])
        return p / "t.pt", "truncated"
    if kind == "not_npy":
        (p / "fake.npy").write_bytes(b"hello, not numpy" * 8)
        return p / "fake.npy", "no NumPy header"
    if kind == "binary_csv":
        (p / "latin.csv").write_bytes(b"1,2\n\xe9,3\n")
        return p / "latin.csv", "unreadable"
    if kind == "suffix":
        (p / "x.parquet").write_bytes(b"PAR1")
        return p / "x.parquet", "unsupported data format .parquet"
    if kind == "missing":
        return p / "nope.npy", "not found"
    if kind == "pt_not_tensor":
        torch.save([1, 2, 3], p / "list.pt")
        return p / "list.pt", "not a tensor"
    raise AssertionError(kind)


BAD_KINDS = [
    "nan",
    "inf",
    "empty_file",
    "no_samples",
    "header_only",
    "non_numeric",
    "ragged",
    "strings",
    "objects",
    "truncated_npy",
    "truncated_npz",
    "truncated_pt",
    "not_npy",
    "binary_csv",
    "suffix",
    "missing",
    "pt_not_tensor",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_data_is_one_clear_line(tmp_path, kind):
    path, words = _write_bad(tmp_path, kind)
    assert words in _message(path)


class _CreatesFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_data_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    evil_pt = tmp_path / "evil.pt"
    torch.save({"x": _CreatesFile(marker)}, evil_pt)
    evil_npy = tmp_path / "evil.npy"
    with open(evil_npy, "wb") as fh:  # a real .npy header, then a pickled object array
        np.lib.format.write_array(fh, np.array([_CreatesFile(marker)], dtype=object), allow_pickle=True)
    raw = tmp_path / "evil.pth"
    raw.write_bytes(pickle.dumps(_CreatesFile(marker)))
    for path in (evil_pt, evil_npy, raw):
        _message(path, key="x")
    assert not marker.exists()
