"""Analytic checks: PCA reference, affine certificates, far-field rays (issue 3).

Every model here is tiny and either hand-set (so the blind subspace or ray is known exactly)
or trained for about a second; data are generated or come from scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from aeaudit import scan
from aeaudit.audit import prepare
from aeaudit.config import ScanConfig
from aeaudit.probes import DEFAULT_PROBES, PROBES, make_probe
from aeaudit.report.json_report import to_json
from aeaudit.zoo import ConvAutoencoder, MLPAutoencoder

ANALYTIC = ("pca-reference", "affine", "far-field")


def _context(model, data, **settings):
    state = prepare(model, data, ScanConfig().with_overrides(quiet=True, **settings))
    return state, state.context(state.recon_objective())


def _run(name, ctx, **settings):
    return make_probe(name, settings).run(ctx)


def _gaussian(n, stds, mean, m=800, seed=0, rotate=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, n)) * np.asarray(stds)
    if rotate:
        q, _ = np.linalg.qr(rng.normal(size=(n, n)))
        x = x @ q.T
    return (x + mean).astype(np.float32)


def _pca_autoencoder(data, d):
    """A linear autoencoder with biases set to the PCA solution of Appendix A.1."""
    mu = data.mean(axis=0)
    v = np.linalg.svd(data - mu, full_matrices=False)[2][:d].T
    model = MLPAutoencoder([data.shape[1], d, data.shape[1]], activation="identity")
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.tensor(v.T))
        model.encoder[0].bias.copy_(torch.tensor(-v.T @ mu))
        model.decoder[0].weight.copy_(torch.tensor(v))
        model.decoder[0].bias.copy_(torch.tensor(mu))
    return model


def _axis_autoencoder(gains):
    """Linear [4, 2, 4] autoencoder keeping x1, x2 with decoder gains ``gains``, no biases:
    ``A = diag(g1, g2, 0, 0)``, so ``A v = v`` exactly on the axes whose gain is 1."""
    model = MLPAutoencoder([4, 2, 4], activation="identity")
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        model.encoder[0].bias.zero_()
        model.decoder[0].weight.copy_(torch.tensor([[gains[0], 0], [0, gains[1]], [0, 0], [0, 0]]))
        model.decoder[0].bias.zero_()
    return model


def _relu_toy(gain):
    """[2, 5, 1, 5, 2] ReLU net of §4.4.1: one live unit per hidden layer, the others dead.
    For x1 + x2 > -10 it computes ``2·gain·P x`` with P the projection on the diagonal (1, 1),
    so with gain 0.5 the ray along +(1, 1) is reconstructed exactly however far out; toward
    −(1, 1) the units switch off and the output is constant."""
    model = MLPAutoencoder([2, 5, 1, 5, 2])
    e1, e2, d1, d2 = model.encoder[0], model.encoder[2], model.decoder[0], model.decoder[2]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        e1.weight[0] = torch.tensor([1.0, 1.0])
        e1.bias.fill_(-1.0)
        e1.bias[0] = 10.0
        e2.weight[0, 0], e2.bias[0] = 1.0, -10.0
        d1.weight[0, 0] = 1.0
        d1.bias.fill_(-1.0)
        d1.bias[0] = 10.0
        d2.weight[:, 0] = gain
        d2.bias.fill_(-10.0 * gain)
    return model


def _diagonal_data(m=500, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=m)
    off = 0.05 * rng.normal(size=m)
    return np.stack([a + off, a - off], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- registry
def test_analytic_probes_are_registered_and_run_first():
    assert set(ANALYTIC) <= set(PROBES)
    assert DEFAULT_PROBES[:3] == ANALYTIC
    assert all(PROBES[n].kind == "analytic" for n in ANALYTIC)


# ----------------------------------------------------------------------------- PCA reference
def test_pca_reference_points_are_far_and_reconstructed_by_pca():
    data = _gaussian(6, [3, 2, 0.3, 0.3, 0.3, 0.3], 5.0)
    _, ctx = _context(_pca_autoencoder(data, 2), data)
    res = _run("pca-reference", ctx)
    art = res.artifacts
    assert res.status == "complete" and art["d"] == 2 and res.findings == []
    assert len(art["points"]) == 2 * 2 * 3
    for p in art["points"]:
        assert p["distance_ratio"] >= 0.999 * p["target_ratio"]
    # PCA's loss on its own plane is zero up to float64 rounding, far below its normal losses
    assert art["max_pca_loss"] <= 1e-9 * art["pca_loss_normal"]["min"]


def test_pca_reference_skips_without_a_latent_size():
    data = _gaussian(4, [1, 1, 1, 1], 0.0, m=200)
    _, ctx = _context(torch.nn.Sequential(torch.nn.Linear(4, 4)), data)
    res = _run("pca-reference", ctx)
    assert res.status == "skipped" and "latent size" in res.reason


# ----------------------------------------------------------------------------- affine
def test_affine_hand_set_weights_certify_the_exact_blind_subspace():
    data = _gaussian(4, [3, 3, 0.3, 0.3], 0.0, rotate=False)
    state, ctx = _context(_axis_autoencoder((1.0, 1.0)), data)
    b = state.baseline
    res = _run("affine", ctx)
    assert len(res.findings) == 1
    f = res.findings[0]
    d = f.details
    assert f.kind == "certificate" and f.severity == "critical" and f.verified
    assert d["unbounded"] and d["blind_dimension"] == 2 and d["unbounded_dimension"] == 2
    assert d["eigenvalues_near_1"] == [1.0, 1.0]
    assert d["blind_distance_tau_op"] == math.inf and d["blind_distance_ratio"] >= 0.99e6
    assert max(d["principal_angles_to_pca_deg"]) < 3.0
    # the example lies in span(e1, e2), 10³·s out, and is reconstructed exactly
    assert f.distance_ratio == pytest.approx(1e3, rel=1e-3)
    assert np.abs(f.x[2:]).max() < 1e-12 and f.loss <= 1e-20
    assert max(d["series"]["loss"]) <= 1e-20 and abs(d["growth_exponent"]) < 1e-6
    assert f.loss <= b.tau_min


def test_affine_closed_form_reach_brackets_the_measured_crossing():
    """λ = 0.99 on x1: the loss grows like ((1 − λ) t)²/n and the closed-form τ_op distance
    must sit between the last measured point below τ_op and the first above it."""
    data = _gaussian(4, [3, 3, 0.3, 0.3], 0.0, rotate=False)
    state, ctx = _context(_axis_autoencoder((0.99, 1.0)), data)
    b = state.baseline
    res = _run("affine", ctx)
    dirs = {round(x["residual_slope"], 4): x for x in res.artifacts["directions"]}
    assert set(dirs) == {0.0, 0.01}
    near = dirs[0.01]
    assert not near["unbounded"] and dirs[0.0]["unbounded"]
    t, loss = np.array(near["series"]["t"]), np.array(near["series"]["loss"])
    reach = near["blind_distance_tau_op"]
    assert t[loss <= b.tau_op].max() <= reach <= t[loss > b.tau_op].min()
    assert 1.9 < near["growth_exponent"] < 2.05
    assert near["blind_distance"] == pytest.approx(0.95 * reach, rel=0.05)
    assert sorted(res.findings[0].details["eigenvalues_near_1"]) == pytest.approx([0.99, 1.0], abs=1e-7)


def test_affine_linear_ae_trained_by_gradient_descent_matches_pca():
    torch.manual_seed(0)
    data = _gaussian(6, [3, 2, 0.3, 0.3, 0.3, 0.3], 1.0, m=400, seed=1)
    model = MLPAutoencoder([6, 2, 6], activation="identity")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.tensor(data)
    for _ in range(1000):
        opt.zero_grad()
        (model(x) - x).pow(2).mean().backward()
        opt.step()
    state, ctx = _context(model, data)
    b = state.baseline
    res = _run("affine", ctx)
    f = res.findings[0]
    d = f.details
    assert d["blind_dimension"] == 2 and d["offset_condition"]
    assert max(d["principal_angles_to_pca_deg"]) < 2.0  # Baldi & Hornik
    assert all(abs(e - 1) < 1e-2 for e in d["eigenvalues_near_1"])
    assert d["blind_distance_ratio"] >= 100  # hundreds of times s
    assert f.loss <= b.tau_op and f.distance >= b.min_distance


def test_affine_says_relu_net_is_not_affine():
    data = _diagonal_data()
    _, ctx = _context(_relu_toy(0.5), data)
    res = _run("affine", ctx)
    assert res.findings == [] and res.artifacts["affine"] is False and "not affine" in res.reason


# ----------------------------------------------------------------------------- far field
FAST = {"random_rays": 8, "sphere_starts": 16, "sphere_steps": 60, "optimised_rays": 2}


def test_far_field_certifies_the_known_blind_ray_of_a_relu_toy():
    data = _diagonal_data()
    state, ctx = _context(_relu_toy(0.5), data)
    b = state.baseline
    res = _run("far-field", ctx, **FAST)
    certs = [f for f in res.findings if f.details["unbounded"]]
    assert len(certs) == 1
    f = certs[0]
    # the start is shifted off the mean's small off-diagonal offset, so the loss is ~0 all along
    assert f.kind == "certificate" and f.severity == "critical" and f.details["within_tau_min"]
    assert f.x @ np.array([1, 1]) / np.linalg.norm(f.x) / math.sqrt(2) > 0.9999  # along +(1, 1)
    assert abs(f.details["growth_exponent"]) < 0.01 and f.details["far_field_slope"] < 1e-9
    # the ray starts level with the data's farthest point along it: distance ≥ t = 10³·s
    assert 1e3 * (1 - 1e-12) <= f.distance_ratio <= 1.001e3 and f.loss <= b.tau_op
    # re-verified in float64: the loss matches a float64 copy of the model
    m64 = _relu_toy(0.5).double()
    x = torch.tensor(f.x)[None]
    with torch.no_grad():
        assert f.loss == pytest.approx(float((m64(x) - x).pow(2).mean()), rel=1e-9)
    # the opposite ray switches the units off: an ordinary ray
    rays = res.artifacts["rays"]
    pca = [r for r in rays if r["source"] == "pca" and r["blind_distance_ratio"] < 100]
    assert pca and all(abs(r["growth_exponent"] - 2) < 0.05 for r in pca)


def test_far_field_gain_mismatch_is_not_certified():
    data = _diagonal_data()
    _, ctx = _context(_relu_toy(0.6), data)
    res = _run("far-field", ctx, **FAST)
    rays = res.artifacts["rays"]
    assert not any(r["unbounded"] for r in rays) and not any(f.details["unbounded"] for f in res.findings)
    diagonal = min(rays, key=lambda r: r["far_field_slope"])  # the slowest ray is the diagonal, slope 1.2 − 1
    assert diagonal["far_field_slope"] == pytest.approx(0.2, rel=1e-3)
    assert abs(diagonal["growth_exponent"] - 2) < 0.05


def test_far_field_smooth_net_gets_evidence_but_no_certificate():
    torch.manual_seed(0)
    data = _diagonal_data(300)
    _, ctx = _context(MLPAutoencoder([2, 5, 1, 5, 2], activation="sigmoid"), data)
    res = _run("far-field", ctx, **FAST)
    art = res.artifacts
    assert res.findings == [] and not art["certificates_apply"] and art["smooth_ops"] == ["Sigmoid"]
    assert "no far-field certificate applies" in res.reason
    exps = [r["growth_exponent"] for r in art["rays"]]
    assert all(abs(e - 2) < 0.05 for e in exps)  # a saturated sigmoid net extrapolates a constant


@pytest.fixture(scope="module")
def digits_images():
    images = load_digits().images[:120] / 16.0
    out = np.zeros((len(images), 1, 28, 28), dtype=np.float32)
    out[:, 0, 2:26, 2:26] = np.kron(images, np.ones((3, 3)))
    return out


def test_conv_relu_autoencoder_runs_through(digits_images):
    torch.manual_seed(0)
    settings = {"random_rays": 4, "sphere_starts": 4, "sphere_steps": 5, "optimised_rays": 1}
    for bounds in ("auto", "none"):
        _, ctx = _context(ConvAutoencoder(latent_dim=2), digits_images, bounds=bounds, probe_settings=settings)
        results = {n: make_probe(n, settings).run(ctx) for n in ANALYTIC}
        statuses = {n: (r.status, r.reason) for n, r in results.items()}
        assert all(r.status in ("complete", "skipped") for r in results.values()), statuses
        assert results["affine"].artifacts["affine"] is False
        rays = results["far-field"].artifacts["rays"]
        assert rays and all(np.isfinite(r["series"]["loss"]).all() for r in rays)
        if bounds == "auto":
            assert "bounded domain" in results["far-field"].reason
            assert all(r["growth_exponent"] is None and r["reach_ratio"] < 10 for r in rays)
        else:
            assert all(r["growth_exponent"] is not None for r in rays)


# ----------------------------------------------------------------------------- end to end
def test_scan_pca_autoencoder_gives_a_certificate_and_fails_the_gate():
    """PCA weights stored in float32 map the plane onto itself only up to float32 rounding
    (eigenvalues 1 ± a few 1e-9): a blind plane reaching ~10⁸·s, measured and extrapolated, but not
    an unbounded one — that claim needs a slope of zero to float64 precision (issue 12, item 5)."""
    data = _gaussian(10, [3, 3, 3] + [0.3] * 7, 5.0, m=1000)
    result = scan(_pca_autoencoder(data, 3), data, probes=ANALYTIC, scorers=(), quiet=True)
    certs = [f for f in result.findings if f.kind == "certificate"]
    assert certs and result.exit_code() == 1
    f = certs[0]
    d = f.details
    assert not d["unbounded"] and 0 < d["residual_slope"] < 1e-7
    assert d["blind_distance_ratio"] >= 1e6 and d["blind_distance_ratio"] <= d["blind_distance_tau_op_ratio"] < math.inf
    assert f.severity == "critical" and f.distance_ratio >= 1e3 and f.loss <= result.thresholds["tau_min"]
    report = to_json(result.to_dict())
    assert '"unbounded": false' in report and '"pca-reference"' in report and "extrapolated" in report


def test_a_gain_a_few_ulps_above_one_is_a_finite_reach_not_unbounded():
    """Issue 12, item 5: the ReLU toy with decoder gain 0.5 + 4 float32 ulps crosses τ_op near
    3·10⁶·s; the far-field check must not call it unbounded, and must extrapolate the crossing."""
    data = _diagonal_data()
    gain = float(np.nextafter(np.float32(0.5), np.float32(1)) + 3 * (np.spacing(np.float32(0.5))))
    state, ctx = _context(_relu_toy(gain), data)
    res = _run("far-field", ctx, **FAST)
    assert not any(r["unbounded"] for r in res.artifacts["rays"])
    diagonal = min(res.artifacts["rays"], key=lambda r: r["far_field_slope"])
    assert diagonal["far_field_slope"] > diagonal["slope_tolerance"]
    # the loss along the diagonal is ((2·gain − 1)·t)²/2: it reaches τ_op at t = sqrt(2 τ_op)/(2·gain − 1)
    crossing = math.sqrt(2 * state.baseline.tau_op) / (2 * np.float32(gain) - 1) / state.baseline.scale
    assert diagonal["extrapolated_reach_ratio"] == pytest.approx(crossing, rel=0.05)
