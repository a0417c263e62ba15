"""The searches: latent grid, PGD (latent and input space), random baseline, distances, merging.

The planted blind spot: normal data is two blobs on a d-dimensional subspace; the autoencoder
is also trained on a third, hidden blob between them that the audit never sees. The hidden
blob reconstructs well and lies far from every normal sample, so a search that works must
report a verified, far, low-loss finding there.
"""

from __future__ import annotations

import functools
import json
import time

import numpy as np
import pytest
import torch
from helpers import constant_ae

from aeaudit import scan
from aeaudit.audit import prepare
from aeaudit.config import ScanConfig
from aeaudit.findings import Finding, greedy_merge, merge_and_rank
from aeaudit.geometry import NearestNeighbours
from aeaudit.probes import DEFAULT_PROBES, PROBES, Objective
from aeaudit.probes.latent_grid import coarse_to_fine
from aeaudit.zoo import MLPAutoencoder


@functools.cache
def _planted(n_features: int, latent: int, seed: int = 0):
    g = np.random.default_rng(seed)
    basis = np.linalg.qr(g.normal(size=(n_features, latent)))[0]
    centres = np.zeros((3, latent))
    centres[0, 0], centres[1, 0], centres[2, 1] = -3.0, 3.0, 2.5  # the hidden blob sits between, off to the side
    blobs = [c + s * g.normal(size=(n, latent)) for c, s, n in zip(centres, (0.5, 0.5, 0.3), (300, 300, 100))]
    x = np.concatenate(blobs) @ basis.T + 0.05 * g.normal(size=(700, n_features))
    x = x.astype(np.float32)
    torch.manual_seed(seed)
    model = MLPAutoencoder([n_features, 32, latent, 32, n_features], activation="tanh")
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    data = torch.as_tensor(x)
    for _ in range(800):
        opt.zero_grad()
        (model(data) - data).pow(2).mean().backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, x[:600], x[600:]


def planted(n_features: int, latent: int):
    """``(model, normal data, hidden blob)``: the model was trained on both, the audit sees the normal data only."""
    with torch.random.fork_rng():
        with torch.enable_grad():
            state, normal, hidden = _planted(n_features, latent)
    model = MLPAutoencoder([n_features, 32, latent, 32, n_features], activation="tanh")
    model.load_state_dict(state)
    return model.eval(), normal, hidden


def disc_data(n: int = 600, seed: int = 0) -> np.ndarray:
    """Uniform in the unit disc: densely covered, so no point near it is far from all samples."""
    g = np.random.default_rng(seed)
    r, phi = np.sqrt(g.uniform(size=n)), g.uniform(0, 2 * np.pi, size=n)
    return np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- planted blind spots
def test_grid_finds_the_planted_blind_spot_in_a_2d_latent():
    model, normal, hidden = planted(10, 2)
    result = scan(model, normal, probes=("grid",), time_limit=None, scorers=(), quiet=True)
    t = result.thresholds
    assert result.status == "complete" and result.verdict.startswith("FAIL")
    top = result.findings[0]
    assert top.probe == "grid" and top.verified and top.latent is not None and len(top.latent) == 2
    assert top.distance >= t["min_distance"] and top.loss <= t["tau_op"]
    # the best finding is the hidden blob: within δ of one of its samples, far from all normal ones
    assert np.linalg.norm(hidden - top.x.reshape(1, -1), axis=1).min() < t["min_distance"]
    assert np.linalg.norm(normal - top.x.reshape(1, -1), axis=1).min() >= t["min_distance"]


def test_grid_loss_map_is_a_modest_json_figure():
    model, normal, _ = planted(10, 2)
    result = scan(model, normal, probes=("grid",), time_limit=None, scorers=(), quiet=True)
    art = result.artifacts["grid"]
    lm = art["loss_map"]
    assert lm["kind"] == "grid" and lm["axis_names"] == ["z1", "z2"]
    assert len(lm["u"]) == len(lm["v"]) == 200
    losses = np.asarray(lm["losses"], dtype=float)
    assert losses.shape == (200, 200) and np.isfinite(losses).all()
    assert np.asarray(lm["far"]).shape == (200, 200)
    assert 0 < len(lm["normal"]) <= 2000 and len(lm["findings"]) == min(art["low_and_far"], 2000) > 0
    assert lm["contour"] == pytest.approx(result.thresholds["tau_op"])
    # a finding's map position is its latent: (z - origin) · basisᵀ with the identity basis here
    z = np.asarray(result.findings[0].latent)
    assert np.min(np.linalg.norm(np.asarray(lm["findings"]) - z, axis=1)) < 1e-3 * np.ptp(lm["u"])
    assert len(json.dumps(art)) < 1_500_000


def test_grid_note_counts_the_decodes_below_tau_min_and_the_farthest_of_them():
    model, normal, _ = planted(10, 2)
    result = scan(model, normal, probes=("grid",), time_limit=None, scorers=(), quiet=True)
    t, (grid,) = result.thresholds, result.probes
    losses = np.asarray(result.artifacts["grid"]["loss_map"]["losses"], dtype=float)
    count, rest = grid["reason"].split(" of ", 1)
    assert rest.startswith(f"{losses.size:,} decodes score below τ_min")
    # the map's losses are rounded to 4 significant digits: count with that much slack either way
    assert (
        (losses <= t["tau_min"] * (1 - 1e-3)).sum()
        <= int(count.replace(",", ""))
        <= (losses <= t["tau_min"] * (1 + 1e-3)).sum()
    )
    farthest = float(grid["reason"].rsplit("the farthest ", 1)[1].split("·s")[0])
    critical = [f for f in result.findings if f.loss <= t["tau_min"]]  # verified: their distance is a lower bound
    assert critical and farthest >= max(f.distance for f in critical) / t["scale"] - 0.01


def test_pgd_finds_the_planted_blind_spot_in_an_8d_latent():
    model, normal, _ = planted(16, 8)
    result = scan(model, normal, probes=("pgd-latent", "pgd-input"), time_limit=None, scorers=(), quiet=True)
    t = result.thresholds
    assert result.verdict.startswith("FAIL")
    for probe in ("pgd-latent", "pgd-input"):
        mine = [f for f in result.findings if f.probe == probe]
        assert mine, f"{probe} found nothing"
        assert all(
            f.verified and f.distance >= t["min_distance"] and f.loss <= t["tau_op"]
            for f in mine
            if f.severity != "warning"
        )
        # a warning: more normal than every normal sample, between s and δ from the data
        assert all(
            t["scale"] <= f.distance < t["min_distance"] and f.loss <= t["tau_min"]
            for f in mine
            if f.severity == "warning"
        )
    art = result.artifacts["pgd-latent"]
    assert art["lowest"]["feasible"] > 0
    # the outward walk goes at least as far as the lowest-loss search, staying at or below τ_op
    assert art["farthest"]["distance"] >= art["lowest"]["distance"] * 0.99
    assert art["farthest"]["score"] <= t["tau_op"]


def test_a_model_without_blind_spots_yields_none_found():
    data = disc_data()
    result = scan(
        constant_ae((0.0, 0.0)),
        data,
        probes=("grid", "pgd-latent", "pgd-input", "random"),
        time_limit=None,
        scorers=(),
        quiet=True,
    )
    assert result.status == "complete"
    assert [p["status"] for p in result.probes] == ["complete"] * 4
    assert result.findings == [] and result.verdict.startswith("PASS: nothing at or above the gate")
    assert result.exit_code() == 0
    assert all(p["evaluations"] > 0 for p in result.probes)
    # the outward walk from the normal data ends inside the δ margin: the low-loss region is the data's own
    walk = result.artifacts["pgd-input"]["farthest"]
    assert walk["feasible"] > 0 and walk["distance"] < result.thresholds["min_distance"]


def test_searches_minimise_the_given_objective_not_the_loss():
    """An adaptive search hands in another score: PGD must follow it. A score that is high
    everywhere leaves nothing to find where the plain loss finds the blind spot."""
    model, normal, _ = planted(16, 8)
    state = prepare(model, normal, ScanConfig(quiet=True, scorers=()))
    settings = dict(steps=40, restarts=0, farthest_starts=0)
    b = state.baseline
    high = Objective("always-high", lambda x: state.adapter.loss(x) + 10 * b.tau_op, b.tau_min, b.tau_op)
    for objective, expect in ((state.recon_objective(), True), (high, False)):
        probe = PROBES["pgd-latent"](**settings)
        result = probe.run(state.context(objective))
        low = (
            objective.evaluate(result.candidates.x) <= b.tau_op
            if len(result.candidates)
            else torch.zeros(0, dtype=torch.bool)
        )
        assert bool(low.any()) is expect


# --------------------------------------------------------------------------- determinism and budget
def test_same_seed_same_findings():
    model, normal, _ = planted(10, 2)
    kwargs = dict(
        probes=("grid", "pgd-latent", "pgd-input", "random"),
        time_limit=None,
        scorers=(),
        quiet=True,
        seed=3,
        probe_settings={"steps": 30, "resolution": 60, "samples": 512},
    )
    a, b = scan(model, normal, **kwargs), scan(model, normal, **kwargs)
    assert len(a.findings) == len(b.findings) > 0
    for fa, fb in zip(a.findings, b.findings):
        assert (fa.probe, fa.severity, fa.loss, fa.distance) == (fb.probe, fb.severity, fb.loss, fb.distance)
        if fa.x is not None:
            np.testing.assert_array_equal(fa.x, fb.x)


def test_a_tiny_time_limit_stops_the_work_and_the_scan_is_inconclusive():
    model, normal, _ = planted(16, 8)
    start = time.perf_counter()
    result = scan(
        model,
        normal,
        probes=("grid", "pgd-latent", "pgd-input", "random"),
        time_limit=0.5,
        scorers=(),
        quiet=True,
        probe_settings={"steps": 10**6, "restarts": 10**6, "samples": 2**20},
    )
    elapsed = time.perf_counter() - start
    assert result.status == "incomplete" and "time limit" in result.stopped
    assert all(p["status"] == "incomplete" and "time limit" in p["reason"] for p in result.probes)
    if not result.gate_failed():  # verified findings made before the cap would still fail the gate
        assert result.outcome.value == "INCONCLUSIVE" and result.exit_code() == 4
    # without the cap, 10**6 steps would run for hours; the slack covers one batch past it on a loaded 2-core CI
    assert sum(p["seconds"] for p in result.probes) < 0.5 + 2.0
    assert elapsed < 10


def test_default_probes_include_the_searches():
    assert {"grid", "pgd-latent", "pgd-input", "random"} <= set(DEFAULT_PROBES)
    assert all(name in PROBES for name in DEFAULT_PROBES)


# --------------------------------------------------------------------------- distances
def test_nearest_neighbours_equal_a_float64_brute_force():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(500, 30, generator=g) * 10 + 100  # large norms, where the GEMM identity is imprecise
    queries = torch.cat(
        [
            ref[:50] + 1e-3 * torch.randn(50, 30, generator=g),  # near-duplicates
            torch.randn(200, 30, generator=g) * 10 + 100,
            ref[50:60],
        ]
    )
    d64 = torch.cdist(queries.double(), ref.double())
    nn = NearestNeighbours(ref, chunk_elements=4096)  # several chunks
    dist, idx = nn.query(queries)
    np.testing.assert_array_equal(idx.numpy(), d64.argmin(dim=1).numpy())
    np.testing.assert_allclose(dist.double().numpy(), d64.min(dim=1).values.numpy(), rtol=1e-5, atol=1e-4)
    # differentiable: the gradient is the unit vector away from the nearest reference
    q = queries[50:60].double().requires_grad_(True)
    d, i = NearestNeighbours(ref.double()).query(q + 0.5)
    (grad,) = torch.autograd.grad(d.sum(), q)
    np.testing.assert_allclose(
        grad.numpy(), ((q.detach() + 0.5 - ref.double()[i]) / d.detach()[:, None]).numpy(), rtol=1e-10
    )
    # float64 reference set (the verifier's): agreement to rounding
    d, i = NearestNeighbours(ref.double()).query(queries.double())
    np.testing.assert_allclose(d.numpy(), d64.min(dim=1).values.numpy(), rtol=1e-12, atol=1e-9)


def test_shortlisted_distance_is_exact_near_the_listed_points_and_never_below_the_truth():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(2000, 20, dtype=torch.float64, generator=g)
    nn = NearestNeighbours(ref)
    queries = ref[:40] + 0.3 * torch.randn(40, 20, dtype=torch.float64, generator=g)
    listed = nn.shortlist(queries, 8)
    assert listed.rows.numel() <= 40 * 8 and torch.equal(listed.points, ref[listed.rows])
    exact = torch.cdist(queries, ref).min(dim=1).values
    np.testing.assert_allclose(nn.nearest_among(queries, listed).numpy(), exact.numpy(), rtol=1e-12)
    # after a move the list may miss the new nearest reference: the distance is then an upper bound
    moved = queries + 2.0 * torch.randn(40, 20, dtype=torch.float64, generator=g)
    assert bool((nn.nearest_among(moved, listed) >= torch.cdist(moved, ref).min(dim=1).values - 1e-12).all())
    # differentiable through the chosen reference: the unit vector away from it
    q = queries.clone().requires_grad_(True)
    d = nn.nearest_among(q, listed)
    (grad,) = torch.autograd.grad(d.sum(), q)
    nearest = ref[torch.cdist(queries, ref).argmin(dim=1)]
    np.testing.assert_allclose(grad.numpy(), ((queries - nearest) / d.detach()[:, None]).numpy(), rtol=1e-10)


# --------------------------------------------------------------------------- merging and grid order
def _naive_merge(x: torch.Tensor, radius: float) -> tuple[list[int], list[int]]:
    taken, kept, absorbed = np.zeros(len(x), dtype=bool), [], []
    for i in range(len(x)):
        if taken[i]:
            continue
        near = ((x - x[i]).norm(dim=1) < radius).numpy()
        near[: i + 1] = False
        new = near & ~taken
        taken |= new
        kept.append(i)
        absorbed.append(int(new.sum()))
    return kept, absorbed


def test_greedy_merge_equals_the_one_by_one_definition():
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(40, 6, generator=g, dtype=torch.float64) * 3
    x = centres[torch.randint(0, 40, (700,), generator=g)] + 0.2 * torch.randn(700, 6, generator=g, dtype=torch.float64)
    expected = _naive_merge(x, 0.5)
    assert 40 <= len(expected[0]) < 700
    for block in (1, 64, 4096):
        assert greedy_merge(x, 0.5, block) == expected


def test_merge_and_rank_collapses_thousands_of_grid_duplicates():
    g = np.random.default_rng(0)
    sites = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    findings = []
    for k in range(3000):
        x = sites[k % 3] + 0.01 * g.normal(size=2)
        findings.append(
            Finding(
                "adversarial",
                "grid",
                "high" if k % 3 else "critical",
                0.1,
                0.5,
                1.0,
                5.0 + k % 3,
                5.0 + k % 3,
                True,
                0,
                x=x,
            )
        )
    start = time.perf_counter()
    kept, counts = merge_and_rank(findings, scale=1.0, top_k=2)
    assert time.perf_counter() - start < 20  # the old pairwise loop took minutes at this size
    assert counts["reported"] == 3 and counts["merged_duplicates"] == 2997
    assert [f.severity for f in kept] == ["critical", "high", "high"]
    assert sum(f.details["merged_duplicates"] for f in kept) == 2997
    assert kept[0].x is not None and kept[2].x is None  # arrays kept for the top 2 only


def test_coarse_to_fine_order_leaves_complete_coarser_grids():
    order = coarse_to_fine(9, 2)
    assert sorted(order.tolist()) == list(range(81))
    rows, cols = np.divmod(order, 9)
    for stride in (8, 4, 2, 1):  # the first n points are exactly the lattice with this stride
        n = len(range(0, 9, stride)) ** 2
        assert set(zip(rows[:n] % stride, cols[:n] % stride)) == {(0, 0)}


@pytest.mark.parametrize(
    "latent, kind, shape, design",
    [
        (1, "line", (1, 50), "full grid"),
        (3, "slice", (30, 30), "full grid + principal"),
        (5, "slice", (30, 30), "Sobol sample of 1024 points"),
    ],
)
def test_grid_design_follows_the_latent_dimension(latent, kind, shape, design):
    torch.manual_seed(0)
    model = MLPAutoencoder([6, 16, latent, 16, 6], activation="tanh").eval()
    data = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    result = scan(
        model,
        data,
        probes=("grid",),
        time_limit=None,
        scorers=(),
        quiet=True,
        probe_settings={"resolution": 50, "resolution_3d": 10, "samples": 1000, "slice_resolution": 30},
    )
    art = result.artifacts["grid"]
    lm = art["loss_map"]
    assert result.probes[0]["status"] == "complete" and art["latent_dim"] == latent
    assert lm["kind"] == kind and art["design"].startswith(design)
    assert (
        np.asarray(lm["losses"], dtype=float).shape == shape
        and np.isfinite(np.asarray(lm["losses"], dtype=float)).all()
    )
    assert art["evaluated"] == art["points"] == shape[0] * shape[1] + {1: 0, 3: 1000, 5: 1024}[latent]
    normal = np.asarray(lm["normal"])
    assert normal.shape == (160, 2)  # the reference part of the data, in map coordinates
    if kind == "slice":  # the slice is centred on the normal latents' mean
        np.testing.assert_allclose(normal.mean(axis=0), 0.0, atol=1e-4)
