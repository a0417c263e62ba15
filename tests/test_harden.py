"""aeaudit harden and aeaudit compare on tiny models: losses fall, checkpoints reload with their
extras, GradCon's reference is the mean gradient, and compare's replay is consistent."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from helpers import PROJECTION_ARCH, NoSplitNet, gaussian_data, line_data, projection_ae, trained_toy
from typer.testing import CliRunner

from aeaudit.cli import app
from aeaudit.compare import compare
from aeaudit.errors import InputError
from aeaudit.harden import HardenSettings, harden, reinitialise, selection_split
from aeaudit.model import load_model
from aeaudit.scorers import trained_method
from aeaudit.scorers.gradcon import GradConScorer

ARCH = "mlp:2,5,1,5,2"


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return gaussian_data(200, seed=1)


def test_toll_lowers_its_heldout_objective_and_saves_beta(tmp_path, data):
    model = trained_toy()
    before = copy.deepcopy(model.state_dict())
    res = harden(model, data, method="toll", beta=1.0, steps=80, lr=1e-2, seed=0)
    assert res.heldout_after < res.heldout_before
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched
    path = res.save(tmp_path / "toll.pt")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["toll_beta"] == 1.0 and ckpt["aeaudit"]["method"] == "toll" and "gradcon_reference" not in ckpt
    adapter = load_model(path, arch=ARCH)
    assert adapter.checkpoint_extras["toll_beta"] == 1.0
    assert trained_method(adapter.checkpoint_extras) == "toll"
    # the selected weights are the ones saved
    for k, v in res.module.state_dict().items():
        assert torch.equal(adapter.module.state_dict()[k].cpu(), v.cpu())


def test_gradcon_reference_is_the_first_gradient_after_one_step(data):
    """With one step the gradient term is 0 and the reference is that step's MSE gradient."""
    model = trained_toy()
    res = harden(model, data, method="gradcon", steps=1, batch_size=16, seed=3)
    reference = res.extras["gradcon_reference"]
    assert sorted(reference) == ["decoder.0.weight", "decoder.2.weight"]
    train_idx, _ = selection_split(len(data), HardenSettings(method="gradcon", seed=3))
    idx = torch.randint(0, len(train_idx), (16,), generator=torch.Generator().manual_seed(3))
    xb = torch.as_tensor(data[train_idx])[idx]
    fresh = trained_toy()
    loss = (fresh(xb) - xb).pow(2).mean()
    grads = torch.autograd.grad(loss, [fresh.decoder[0].weight, fresh.decoder[2].weight])
    torch.testing.assert_close(reference["decoder.0.weight"], grads[0])
    torch.testing.assert_close(reference["decoder.2.weight"], grads[1])


def test_gradcon_trains_saves_and_reloads_its_reference(tmp_path, data):
    res = harden(trained_toy(), data, method="gradcon", alpha=0.03, steps=60, lr=1e-2, seed=0, from_scratch=True)
    assert res.heldout_after < res.heldout_before  # fresh weights: training must lower the selection loss
    plain = harden(trained_toy(), data, method="gradcon", alpha=0.0, steps=60, lr=1e-2, seed=0, from_scratch=True)
    w, w0 = res.module.decoder[0].weight, plain.module.decoder[0].weight
    assert not torch.allclose(w, w0)  # the double-backward term changes the updates
    path = res.save(tmp_path / "gc.pt")
    extras = load_model(path, arch=ARCH).checkpoint_extras
    assert set(extras["gradcon_reference"]) == {"decoder.0.weight", "decoder.2.weight"}
    for name, ref in extras["gradcon_reference"].items():
        assert ref.shape == res.module.get_submodule(name.rsplit(".", 1)[0]).weight.shape
        assert torch.isfinite(ref).all() and ref.norm() > 0
    assert extras["aeaudit"]["alpha"] == 0.03


def test_torchscript_in_torchscript_out_keeps_extras(tmp_path, data):
    src = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(trained_toy()), str(src))
    res = harden(src, data, method="gradcon", steps=5, seed=0)
    assert res.output_format == "torchscript"
    out = res.save(tmp_path / "ts_hard.pt")
    adapter = load_model(out, data)
    assert adapter.card.format == "torchscript"
    assert set(adapter.checkpoint_extras["gradcon_reference"]) == {"decoder.0.weight", "decoder.2.weight"}
    assert adapter.checkpoint_extras["aeaudit"]["source"] == str(src)
    x = torch.as_tensor(data)
    scorer = GradConScorer().fit(adapter, x, x, 0.05)  # the scorer reads the stored reference
    assert not scorer.posthoc and scorer.method_ == "hooks" and scorer.twin_ is not None  # the eager twin
    stored = adapter.checkpoint_extras["gradcon_reference"]
    for name, ref in zip(scorer.layer_names_, scorer.reference_):
        torch.testing.assert_close(ref, stored[f"{name}.weight"].reshape(-1))
    with pytest.raises(InputError, match="input model"):
        res.save(src)


def test_from_scratch_is_seeded_and_replaces_the_weights():
    a, b, original = trained_toy(), trained_toy(), trained_toy()
    reinitialise(a, 5)
    reinitialise(b, 5)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb)
        assert not torch.equal(va, original.state_dict()[k])


def test_bad_input_is_one_input_error(data):
    with pytest.raises(InputError, match="--method"):
        harden(trained_toy(), data, method="dropout", steps=1)
    with pytest.raises(InputError, match="encoder/decoder"):
        harden(NoSplitNet(), data, method="toll", steps=1)
    with pytest.raises(InputError, match="--steps"):
        harden(trained_toy(), data, method="toll", steps=0)
    with pytest.raises(InputError, match="lower --lr"):  # diverging training stops with advice, not a crash
        harden(trained_toy(), data, method="toll", steps=50, lr=1e15)


def test_compare_a_model_with_itself_closes_nothing(tmp_path):
    """The same weights twice: every original finding is still below the (identical) threshold."""
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(projection_ae().state_dict(), a)
    torch.save({"state_dict": projection_ae().state_dict()}, b)
    out = compare(
        a,
        b,
        line_data(200),
        arch=PROJECTION_ARCH,
        probes=("affine",),
        scorers=("recon",),
        effort="quick",
        device="cpu",
        quiet=True,
    )
    replay = out["original_findings_on_hardened"]
    assert out["original"]["counts"] == out["hardened"]["counts"]
    assert out["original"]["certificates"] == out["hardened"]["certificates"] == 1
    assert replay["n"] > 0 and replay["scores"]["recon"]["still_below_threshold"] == replay["n"]
    assert out["closed"] is False and out["checks"]["original_findings_flagged"] is False
    assert out["exit_code"] == out["results"]["hardened"].exit_code() == 1
    assert out["hardening"]["method"] is None and out["hardening"]["deployed_score"] == "recon"


def test_toll_flags_the_projection_blind_ray_that_recon_misses(tmp_path):
    """A linear autoencoder keeps reconstructing its principal axis whatever the training, so its far
    axis points stay below the reconstruction threshold; Toll's code norm flags them."""
    data = line_data(200)
    res = harden(projection_ae(), data, method="toll", beta=1.0, steps=100, lr=1e-2, seed=0)
    hard, orig = res.save(tmp_path / "h.pt"), tmp_path / "o.pt"
    torch.save(projection_ae().state_dict(), orig)
    out = compare(
        orig,
        hard,
        data,
        arch=PROJECTION_ARCH,
        probes=("affine", "random"),
        scorers=("recon",),
        effort="quick",
        device="cpu",
        quiet=True,
    )
    findings = [f for f in out["results"]["original"].findings if f.x is not None]
    hardened = load_model(hard, arch=PROJECTION_ARCH)
    loss = hardened.to("cpu", torch.float64).losses(torch.as_tensor(np.stack([f.x for f in findings]))).numpy()
    tau_op = out["results"]["hardened"].thresholds["tau_op"]
    replay = out["original_findings_on_hardened"]
    recon, toll = replay["scores"]["recon"], replay["scores"]["toll"]
    assert replay["n"] == len(findings) > 0
    assert recon["still_below_threshold"] == int(np.sum(loss <= tau_op)) > 0
    assert toll["status"] == "complete" and toll["posthoc"] is False
    assert toll["still_below_threshold"] < recon["still_below_threshold"]
    assert out["hardening"]["deployed_score"] == "toll"
    assert out["checks"]["original_findings_flagged"] == (toll["still_below_threshold"] == 0)


def test_cli_harden_then_compare(tmp_path, data):
    model, normal = tmp_path / "toy.pt", tmp_path / "normal.npy"
    torch.save(trained_toy().state_dict(), model)
    np.save(normal, data)
    hard = tmp_path / "hard.pt"
    r = CliRunner().invoke(
        app,
        [
            "harden",
            str(model),
            "--data",
            str(normal),
            "--method",
            "toll",
            "--arch",
            ARCH,
            "-o",
            str(hard),
            "--steps",
            "20",
            "--beta",
            "1",
            "--quiet",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert torch.load(hard, weights_only=True)["toll_beta"] == 1.0
    r = CliRunner().invoke(
        app,
        [
            "compare",
            str(model),
            str(hard),
            "--data",
            str(normal),
            "--arch",
            ARCH,
            "--probes",
            "random",
            "--effort",
            "quick",
            "--out",
            str(tmp_path / "cmp"),
            "--quiet",
        ],
    )
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert r.exit_code == report["exit_code"] and r.exit_code in (0, 1)
    for side in ("original", "hardened"):
        assert (tmp_path / "cmp" / side / "report.json").is_file() and (
            tmp_path / "cmp" / side / "report.html"
        ).is_file()
    r = CliRunner().invoke(
        app,
        [
            "harden",
            str(model),
            "--data",
            str(normal),
            "--method",
            "nope",
            "--arch",
            ARCH,
            "-o",
            str(tmp_path / "x.pt"),
            "--quiet",
        ],
    )
    assert r.exit_code == 2 and "--method" in r.stderr
