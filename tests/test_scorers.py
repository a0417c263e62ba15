"""The scorers (recon, gradcon, toll, energy) and the gap comparison, on tiny hand-checkable models."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import NoSplitNet, gaussian_data, line_data, projection_ae, trained_toy
from torch import nn

from aeaudit.audit import prepare, scan
from aeaudit.config import ScanConfig
from aeaudit.errors import InputError
from aeaudit.gaps import _verdict, adaptive_probe_names, compare_scorers
from aeaudit.model import load_model
from aeaudit.scorers import SCORERS, make_scorer
from aeaudit.scorers.gradcon import REFERENCE_KEY, GradConScorer, decoder_weight_layers, gradcon_score
from aeaudit.scorers.per_sample import per_sample_grads_func, per_sample_grads_hooks, per_sample_grads_loop
from aeaudit.scorers.toll import BETA_KEY
from aeaudit.zoo import GradConCAE


def adapter_of(module: nn.Module, x: torch.Tensor, extras: dict | None = None):
    adapter = load_model(module, x[:2], device="cpu", input_shape=tuple(x.shape[1:]))
    return replace(adapter, checkpoint_extras=extras or {})


def fit(scorer, adapter, x, fpr=0.05):
    """Fit and calibrate on the same normal data (the hand-checked values need no split)."""
    return scorer.fit(adapter, x, x, fpr)


@pytest.fixture(scope="module")
def line():
    """The projection AE f(a, b) = (a, 0) (so L = b²/2, z = a) and its normal data along the first axis."""
    x = torch.as_tensor(line_data(200))
    return adapter_of(projection_ae(), x), x


# --------------------------------------------------------------------------- hand-checkable values
def test_recon_is_half_the_squared_offset(line):
    adapter, x = line
    s = fit(make_scorer("recon"), adapter, x)
    assert torch.allclose(s.score(torch.tensor([[2.0, 0.5], [-7.0, -1.0]])), torch.tensor([0.125, 0.5]))


def test_toll_formula_with_given_beta(line):
    adapter, x = line
    s = fit(make_scorer("toll", {"beta": 2.0}), adapter, x)
    # ||x̂ − x||₂ = |b| and ||z||₂ = |a|: (3, 4) → 4 + 2·3
    assert torch.allclose(s.score(torch.tensor([[3.0, 4.0], [-1.0, 0.0]])), torch.tensor([10.0, 2.0]))
    assert s.posthoc  # the model was not trained with the penalty


def test_toll_posthoc_beta_equalises_medians(line):
    adapter, x = line
    s = fit(make_scorer("toll"), adapter, x)
    expected = np.median(np.abs(x[:, 1].numpy())) / np.median(np.abs(x[:, 0].numpy()))
    assert s.beta_ == pytest.approx(expected, rel=1e-5)
    assert s.posthoc and "post-hoc" in s.note_


def test_toll_reads_trained_beta_and_skips_without_latent(line):
    _, x = line
    trained = fit(make_scorer("toll"), adapter_of(projection_ae(), x, {BETA_KEY: 0.5}), x)
    assert trained.beta_ == 0.5 and not trained.posthoc
    reason = make_scorer("toll").skip_reason(adapter_of(NoSplitNet(), x))
    assert reason is not None and "latent" in reason


def test_gradcon_by_hand_with_checkpoint_reference(line):
    _, x = line
    # decoder weight W (2×1), z = a, x̂ = (a, 0): ∂L/∂W = (x̂ − x)·z = (0, −a·b); reference (0, 1)
    adapter = adapter_of(projection_ae(), x, {REFERENCE_KEY: {"decoder.0.weight": torch.tensor([[0.0], [1.0]])}})
    s = fit(make_scorer("gradcon"), adapter, x)
    assert not s.posthoc
    got = s.score(torch.tensor([[1.0, 0.5], [1.0, -0.5]]))
    # L = 0.125 for both; cos = −1 for (1, 0.5) and +1 for (1, −0.5)
    assert torch.allclose(got, torch.tensor([0.125 + 0.12, 0.125 - 0.12]))


def test_gradcon_rejects_a_reference_that_does_not_fit(line):
    _, x = line
    adapter = adapter_of(projection_ae(), x, {REFERENCE_KEY: {"decoder.0.weight": torch.zeros(3)}})
    with pytest.raises(InputError, match="3 values"):
        fit(make_scorer("gradcon"), adapter, x)


def test_energy_one_step_by_hand(line):
    adapter, x = line
    # at (a, 1): err = (0, 1), ∇E = (0, 1) (the L1 term's gradient is 0 at x₀), step = α·∇E⊙err² = (0, 0.5)
    s = fit(make_scorer("energy", {"steps": 1}), adapter, x)
    p = s.project(torch.tensor([[2.0, 1.0]]))
    assert torch.allclose(p.x, torch.tensor([[2.0, 0.5]]))
    assert p.distance.item() == pytest.approx(0.25)  # mean |x₁ − x₀| over 2 features
    assert p.energy.item() == pytest.approx((0.5 * 0.25 + 0.05 * 0.5) / 2)  # (½·b² + λ·|Δ|₁) per feature
    assert p.anomaly_map.shape == (1, 2)


def test_energy_stops_at_tau_min(line):
    adapter, x = line
    s = fit(make_scorer("energy"), adapter, x)
    on_axis = torch.tensor([[25.0, 0.0]])  # loss 0 ≤ τ_min: already "normal" to the projection
    assert s.project(on_axis).steps.item() == 0 and s.score(on_axis).item() == 0.0


# --------------------------------------------------------------------------- energy descent
def test_energy_never_increases_under_small_plain_steps():
    adapter = adapter_of(trained_toy(), torch.as_tensor(gaussian_data(100)))
    s = fit(make_scorer("energy", {"alpha": 0.02}), adapter, torch.as_tensor(gaussian_data(100)))
    x = torch.tensor([[3.0, 3.0], [-3.0, 3.0], [2.0, -1.0]])
    s.tau_min_ = 0.0  # no early stop, so every step is taken
    energies = torch.stack([s.project(x, steps=k).energy for k in range(0, 8)])
    assert (energies[1:] <= energies[:-1] + 1e-7).all()
    assert (energies[-1] < energies[0]).all()
    assert (s.project(x, steps=7).steps == 7).all()  # no step had to be undone


def test_energy_ends_lower_with_adam():
    adapter = adapter_of(trained_toy(), torch.as_tensor(gaussian_data(100)))
    s = fit(
        make_scorer("energy", {"optimizer": "adam", "alpha": 0.05, "steps": 20}),
        adapter,
        torch.as_tensor(gaussian_data(100)),
    )
    x = torch.tensor([[3.0, 3.0], [-3.0, 3.0]])
    assert (s.project(x).energy < s.project(x, steps=0).energy).all()


def test_energy_backtracks_a_too_large_step(line):
    adapter, x = line
    s = fit(make_scorer("energy", {"alpha": 50.0, "steps": 5}), adapter, x)
    p = s.project(torch.tensor([[0.0, 1.0]]))
    assert math.isfinite(p.energy.item()) and p.energy.item() <= 0.5 / 2  # never above E(x₀) per feature


# --------------------------------------------------------------------------- GradCon batched == loop
class Conv1dAE(nn.Module):
    """A 1-D conv autoencoder whose decoder has a Linear, a ConvTranspose1d and a Conv1d (hook paths)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(1, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2))
        self.decoder = nn.Sequential(
            nn.Linear(2, 12),
            nn.Tanh(),
            nn.Unflatten(1, (3, 4)),
            nn.ConvTranspose1d(3, 2, 4, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv1d(2, 1, 3, padding=2, dilation=2),
        )

    def forward(self, x):
        return self.decoder(self.encoder(x))


class GroupedAE(nn.Module):
    """A decoder with a grouped convolution: only the torch.func path covers it."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(1, 2, 3, padding=1)
        self.decoder = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, groups=2), nn.Tanh(), nn.Conv2d(2, 1, 1))

    def forward(self, x):
        return self.decoder(self.encoder(x))


CASES = {
    "gradcon_cae": (GradConCAE, (1, 28, 28), 4),
    "conv1d": (Conv1dAE, (1, 8), 6),
    "grouped": (GroupedAE, (1, 5, 5), 5),
    "no_split_mlp": (NoSplitNet, (2,), 6),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradcon_batched_equals_per_sample_loop(case):
    make, shape, n = CASES[case]
    torch.manual_seed(0)
    x = torch.rand(n, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    adapter = adapter_of(make().double(), x)
    names, note = decoder_weight_layers(adapter)
    _, g_loop = per_sample_grads_loop(adapter, names, x)
    loss, g_func = per_sample_grads_func(adapter, names, x)
    for gf, gl in zip(g_func, g_loop):
        assert torch.allclose(gf, gl, rtol=1e-5, atol=1e-12)
    refs = [g.mean(dim=0) + 0.1 * g[0] for g in g_loop]  # any fixed direction, not parallel to one sample
    expected = gradcon_score(loss, g_loop, refs, 0.12)
    s = fit(GradConScorer(), adapter, x)
    s.reference_ = refs
    assert torch.allclose(s.score(x), expected, rtol=1e-5, atol=1e-12)
    if case == "grouped":
        assert s.method_ == "func"
    else:
        assert s.method_ == "hooks"
        layers = [adapter.module.get_submodule(nm) for nm in names]
        for gh, gl in zip(per_sample_grads_hooks(adapter.loss, layers, x)[1], g_loop):
            assert torch.allclose(gh, gl, rtol=1e-5, atol=1e-12)
    if case == "no_split_mlp":
        assert names == ["l2"] and "later half" in note


def test_gradcon_posthoc_reference_is_the_mean_gradient_and_score_is_differentiable():
    x = torch.rand(5, 1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    adapter = adapter_of(Conv1dAE().double(), x)
    s = fit(GradConScorer(), adapter, x)
    _, g_loop = per_sample_grads_loop(adapter, s.layer_names_, x)
    for r, g in zip(s.reference_, g_loop):
        assert torch.allclose(r, g.mean(dim=0), rtol=1e-6)
    assert s.posthoc
    xr = x.clone().requires_grad_(True)
    (grad_hooks,) = torch.autograd.grad(s.score(xr).sum(), xr)
    s_func = fit(GradConScorer(method="func"), adapter, x)
    xr2 = x.clone().requires_grad_(True)
    (grad_func,) = torch.autograd.grad(s_func.score(xr2).sum(), xr2)
    assert grad_hooks.abs().max() > 0
    assert torch.allclose(grad_hooks, grad_func, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("method", ["auto", "loop"])
def test_gradcon_on_torchscript_equals_the_eager_model(tmp_path, method):
    """TorchScript runs no hooks: the score runs the scripted decoder's eager twin (``auto``) or one
    backward per sample (``loop``); both must give the eager model's reference, scores and input gradients."""
    x = torch.rand(6, 1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    eager = Conv1dAE().double()
    torch.jit.save(torch.jit.script(eager), str(tmp_path / "ae.pt"))
    scripted = load_model(tmp_path / "ae.pt", x[:2], device="cpu", input_shape=(1, 8))
    s_eager = fit(GradConScorer(), adapter_of(eager, x), x)
    s_script = fit(GradConScorer(method=method), scripted, x)
    assert s_script.method_ == ("hooks" if method == "auto" else "loop") and s_eager.method_ == "hooks"
    assert (s_script.twin_ is not None) == (method == "auto")
    assert s_script.layer_names_ == s_eager.layer_names_ and "TorchScript" in s_script.note_
    for a, b in zip(s_script.reference_, s_eager.reference_):
        assert torch.allclose(a, b, rtol=1e-10)
    grads = []
    for s in (s_script, s_eager):
        xr = x.clone().requires_grad_(True)
        score = s.score(xr)
        grads.append(torch.autograd.grad(score.sum(), xr)[0])
        assert torch.allclose(score.detach(), s_eager.score(x), rtol=1e-10)
    assert grads[1].abs().max() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-8, atol=1e-14)


# --------------------------------------------------------------------------- the shared contract
@pytest.fixture(scope="module")
def toy():
    x = torch.as_tensor(gaussian_data(200))
    return trained_toy(), x


@pytest.mark.parametrize("name", list(SCORERS))
def test_scorer_contract(name, toy):
    model, x = toy
    adapter = adapter_of(model, x)
    before = {k: v.clone() for k, v in adapter.module.state_dict().items()}
    flags = [p.requires_grad for p in adapter.module.parameters()]
    s = make_scorer(name).fit(adapter, x[:160], x[160:], 0.05)
    pts = torch.tensor([[0.05, -0.05], [3.0, 3.0]])
    first, second = s.score_batched(pts), s.score_batched(pts)
    assert first.shape == (2,) and torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert first[1] > first[0] and first[1] > s.threshold_ and s.min_normal_ <= s.threshold_
    s64 = s.rebind(adapter.to("cpu", torch.float64))
    assert torch.allclose(s64.score_batched(pts.double()).float(), first, rtol=1e-4, atol=1e-5)
    after = adapter.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for p in adapter.module.parameters()]
    assert not any(m._forward_hooks for m in adapter.module.modules())


def test_make_scorer_takes_per_scorer_settings():
    settings = {"beta": 3.0, "toll": {"beta": 5.0}}
    assert make_scorer("toll", settings).beta == 5.0
    assert make_scorer("gradcon", settings).beta == 3.0
    with pytest.raises(InputError, match="unknown scorer"):
        make_scorer("nope")
    with pytest.raises(InputError, match="unknown probe"):
        adaptive_probe_names({"adaptive_probes": ["nope"]})


# --------------------------------------------------------------------------- the gap comparison
def test_comparison_on_a_planted_blind_spot():
    # The projection AE reconstructs the whole first axis exactly: far points along it are blind spots.
    result = scan(
        projection_ae(),
        line_data(200),
        effort="quick",
        quiet=True,
        seed=0,
        probes=("random",),
        scorers=("recon", "toll"),
        scorer_settings={"adaptive_probes": ["random"]},
    )
    table = {r["scorer"]: r for r in result.scorers["table"]}
    recon = table["recon"]
    assert result.findings and recon["transferred"] == sum(f.x is not None for f in result.findings)
    assert recon["transferred_detection_rate"] == 0.0  # its own blind spots, by construction
    assert recon["adaptive_findings"] == len(result.findings)  # recon's adaptive search is the scan itself
    assert recon["adaptive_best_distance_ratio"] >= 2.0 and recon["verdict"] == "blind spots remain"
    toll = table["toll"]
    assert toll["posthoc"] is True and toll["auroc"] is not None
    assert result.scorers["adaptive_probes"]["toll"][0]["evaluations"] > 0  # the search against toll ran
    assert set(result.scorers["roc"]) == {"recon", "toll"}
    assert all(f["objective"] in ("recon", "toll") for f in result.scorers["adaptive_findings"])
    assert all(f["verified"] for f in result.scorers["adaptive_findings"])


def test_comparison_reports_a_scorer_that_cannot_apply():
    cfg = ScanConfig(quiet=True, probes=("random",), scorers=("toll",), scorer_settings={"adaptive_probes": ["random"]})
    state = prepare(NoSplitNet(), gaussian_data(100), cfg)
    out = compare_scorers(state, [], [])
    row = out["table"][0]
    assert row["verdict"].startswith("not evaluated (needs the latent code") and row["adaptive_findings"] is None


def test_only_a_completed_empty_search_closes_the_gap():
    closes = _verdict(0.95, 0, True, "", evaluations=1234)
    assert closes.startswith("closes the gap") and "none in 1,234 evaluations" in closes
    cut = _verdict(0.95, 0, True, "pgd-input: interrupted (SIGTERM)", complete=False, evaluations=99)
    assert cut.startswith("inconclusive") and "closes the gap" not in cut and "99 evaluations" in cut
    assert "closes the gap" not in _verdict(None, 0, True, "", evaluations=5)
    assert _verdict(0.95, 3, True, "") == _verdict(0.5, 0, True, "") == "blind spots remain"
    assert _verdict(0.95, 0, False, "pgd-input: skipped") == "not evaluated (pgd-input: skipped)"
