"""The example scripts run, save what their headers promise, and aeaudit loads it with the documented flags.
(Few training steps: this checks the plumbing, not the models' quality.)"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aeaudit import load_data, load_model
from aeaudit.zoo import MLPAutoencoder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, monkeypatch, *args: str):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    threads = torch.get_num_threads()
    try:
        importlib.import_module(name).main()
    finally:
        torch.set_num_threads(threads)


def _loads(model_path: Path, data_path: Path, **options):
    data = load_data(data_path)
    return load_model(model_path, data, device="cpu", **options), data


def test_train_linear_pca_weights_reconstruct_the_plane(tmp_path, monkeypatch):
    run_example("train_linear", monkeypatch, "--out", tmp_path, "--steps", "20")
    data_path = tmp_path / "linear_data.npy"
    for name in ("linear_pca", "linear_gd"):
        adapter, data = _loads(tmp_path / f"{name}.pt", data_path, arch="mlp:8,2,8")
        assert data.shape == (500, 8) and adapter.latent_shape == (2,)
    pca, data = _loads(tmp_path / "linear_pca.pt", data_path, arch="mlp:8,2,8")
    # Lemma 1: a point of the principal plane far from the data reconstructs exactly
    decoder = pca.module.decoder[0]
    far = (decoder.bias + 100.0 * decoder.weight[:, 0]).unsqueeze(0)
    assert float(pca.losses(far)[0]) < 1e-6
    assert float(torch.linalg.vector_norm(far - torch.as_tensor(np.array(data)), dim=1).min()) > 50


def test_train_toys_writes_every_model_and_its_scan_command(tmp_path, monkeypatch):
    run_example("train_toys", monkeypatch, "--out", tmp_path, "--steps", "5")
    manifest = json.loads((tmp_path / "toys.json").read_text())
    assert len(manifest) == 7
    assert {e["arch"] for e in manifest} == {"mlp:2,5,1,5,2", "mlp:2,100,20,1,20,100,2"}
    for name in ("gauss1", "gauss2", "banana"):
        rows = len(np.load(tmp_path / f"{name}.npy"))
        assert rows == (200 if name == "gauss2" else 100)  # 100 points per distribution
    for entry in manifest:
        assert f"--arch {entry['arch']}" in entry["scan"] and f"--activation {entry['activation']}" in entry["scan"]
        adapter, _ = _loads(
            Path(entry["model"]), Path(entry["data"]), arch=entry["arch"], activation=entry["activation"]
        )
        assert adapter.latent_shape == (1,)
        reference = MLPAutoencoder([int(s) for s in entry["arch"][4:].split(",")], activation=entry["activation"])
        assert adapter.card.n_parameters == sum(p.numel() for p in reference.parameters())


def test_train_mnist_fallback_saves_torchscript_and_images(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    run_example("train_mnist", monkeypatch, "--out", tmp_path, "--source", "sklearn", "--steps", "3")
    meta = json.loads((tmp_path / "mnist457.json").read_text())
    assert "scikit-learn" in meta["source"] and meta["digits"] == [4, 5, 7]
    adapter, data = _loads(tmp_path / "mnist457_conv.pt", tmp_path / "mnist457_normal.npy")  # no --arch needed
    assert adapter.card.format == "torchscript"
    assert data.shape[1:] == (1, 28, 28) and data.dtype == np.float32
    assert 0.0 <= float(data.min()) and float(data.max()) <= 1.0
    assert adapter.latent_shape == (2,)
    assert (
        meta["scan"]
        == f"aeaudit scan {tmp_path / 'mnist457_conv.pt'} --data {tmp_path / 'mnist457_normal.npy'} --out aeaudit-out"
    )
