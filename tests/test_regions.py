"""Blind regions: findings grouped into the distinct low-loss sets they lie in, and the ``warning`` severity.

Hand-built ReLU autoencoders on normal data along the two positive half-axes (``t ∈ [0.5, 1.5]``):

- :class:`Rays` ``(line=False)``: ``f(x) = (relu(x₁ − a|x₂|), relu(x₂ − a|x₁|))`` reconstructs the positive
  half-axes exactly and nothing between them: two blind rays that meet only inside the normal data.
- :class:`Rays` ``(line=True)``: ``f(x) = (x₁, relu(x₂ − a|x₁|))`` reconstructs the whole first axis, so a
  straight low-loss path joins its two far ends *through the normal data*: two regions, not one.
- The linear autoencoders of ``examples/train_linear.py``: one blind plane each (Lemma 1), one
  subspace region whatever the searches found on it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from aeaudit import scan
from aeaudit.audit import prepare
from aeaudit.config import ScanConfig
from aeaudit.findings import Candidates, Finding, verify
from aeaudit.regions import _region, describe, group_regions
from aeaudit.report.html import render_html
from aeaudit.report.junit import to_junit
from aeaudit.report.markdown import to_markdown

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SLOPE = 2.0  # how fast the loss grows away from a blind ray


class Rays(nn.Module):
    """The encoder splits each coordinate into its positive and negative parts (a 4-D latent); the
    decoder rebuilds ``(relu(x₁ − a|x₂|), relu(x₂ − a|x₁|))``, or ``(x₁, relu(x₂ − a|x₁|))`` with ``line``."""

    def __init__(self, line: bool = False, a: float = SLOPE):
        super().__init__()
        split, rebuild, out = nn.Linear(2, 4, bias=False), nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)
        first = [1.0, 0.0, 0.0, 0.0] if line else [1.0, -1.0, -a, -a]
        second = [0.0, 1.0, 0.0, 0.0] if line else [0.0, 0.0, 0.0, 0.0]
        with torch.no_grad():
            split.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
            rebuild.weight.copy_(torch.tensor([first, second, [-a, -a, 1.0, -1.0]]))
            out.weight.copy_(torch.tensor([[1.0, -1.0 if line else 0.0, 0.0], [0.0, 0.0, 1.0]]))
        self.encoder = nn.Sequential(split, nn.ReLU())
        self.decoder = nn.Sequential(rebuild, nn.ReLU(), out)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def ray_data(n: int = 300, seed: int = 0) -> np.ndarray:
    """Normal data evenly along both positive half-axes from the origin, ``t ∈ [0, 1.5]``, with a little
    noise across (even spacing leaves no gap in the data wide enough for a finding)."""
    rng = np.random.default_rng(seed)
    t = np.tile(np.linspace(0.0, 1.5, n // 2), 2)
    across = rng.normal(0.0, 0.002, n)
    axis = np.arange(n) >= n // 2
    x = np.where(axis[:, None], np.stack([across, t], 1), np.stack([t, across], 1))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def rays_state():
    return prepare(Rays(), ray_data(), ScanConfig().with_overrides(device="cpu", quiet=True))


@pytest.fixture(scope="module")
def line_state():
    return prepare(Rays(line=True), ray_data(), ScanConfig().with_overrides(device="cpu", quiet=True))


def _findings_at(state, points, probe="random"):
    return verify(Candidates(x=torch.tensor(points, dtype=torch.float32), probe=probe), state.verifier)


def _members(regions) -> list[list[int]]:
    return sorted(sorted(r.members) for r in regions)


# ----------------------------------------------------------------------------- the grouping rule
def test_points_on_two_rays_form_two_regions_and_each_finding_knows_its_region(rays_state):
    state = rays_state
    findings = _findings_at(state, [[10.0, 0.0], [14.0, 0.0], [25.0, 0.0], [60.0, 0.0], [0.0, 12.0], [0.0, 40.0]])
    assert len(findings) == 6  # exact reconstructions far from the data: every point is a finding
    regions, grouping = group_regions(findings, state.verifier, state.baseline)
    assert grouping["complete"] and grouping["path_evaluations"] > 0
    assert _members(regions) == [[0, 1, 2, 3], [4, 5]]
    assert all(f.details["region"] == next(r.id for r in regions if i in r.members) for i, f in enumerate(findings))
    first = regions[0]  # ranked: the farther reach first
    assert first.members == [3, 2, 1, 0] and first.kind == "input pocket" and first.severity == "critical"
    assert first.witness is not findings[3] and first.witness.x[0] == pytest.approx(60.0)  # the farthest, copied
    assert first.distance_ratio_max == pytest.approx(findings[3].distance_ratio) and first.probes == ["random"]
    assert (first.n_witnesses, regions[1].n_witnesses) == (4, 2)


def test_a_low_loss_path_through_the_normal_data_does_not_join(line_state):
    state = line_state
    # the whole first axis reconstructs exactly, but the path from -10 to +10 crosses the normal data
    findings = _findings_at(state, [[-10.0, 0.0], [10.0, 0.0], [-30.0, 0.0], [25.0, 0.0]])
    assert len(findings) == 4
    regions, _ = group_regions(findings, state.verifier, state.baseline)
    assert _members(regions) == [[0, 2], [1, 3]]


def test_a_path_through_high_loss_does_not_join(rays_state):
    state = rays_state
    # (10, 0) and (0, 10) are both blind; the straight path crosses (5, 5), where f ≈ 0 and the loss is 25
    findings = _findings_at(state, [[10.0, 0.0], [0.0, 10.0], [3.0, 0.0]])
    regions, _ = group_regions(findings, state.verifier, state.baseline)
    assert _members(regions) == [[0, 2], [1]]


def test_grouping_is_deterministic_and_ranks_regions_like_findings(rays_state):
    state = rays_state
    pts = [[0.0, 9.0], [11.0, 0.0], [0.0, 30.0], [40.0, 0.0], [13.0, 0.0]]
    one = group_regions(_findings_at(state, pts), state.verifier, state.baseline)[0]
    two = group_regions(_findings_at(state, pts), state.verifier, state.baseline)[0]
    assert [r.to_dict() for r in one] == [r.to_dict() for r in two]
    assert [r.id for r in one] == [1, 2] and one[0].reach_ratio > one[1].reach_ratio


def test_out_of_path_checks_regions_stay_split_and_the_grouping_says_so(rays_state, monkeypatch):
    import aeaudit.region_paths

    findings = _findings_at(rays_state, [[10.0, 0.0], [20.0, 0.0], [40.0, 0.0]])
    monkeypatch.setattr(aeaudit.region_paths, "PAIR_BATCH", 1)
    monkeypatch.setattr(aeaudit.region_paths, "MAX_PATH_EVALUATIONS", 1)
    regions, grouping = group_regions(findings, rays_state.verifier, rays_state.baseline)
    assert not grouping["complete"] and grouping["path_evaluations"] >= 1
    assert len(regions) == 2  # one path checked and joined; the other pair never tried, so never merged


def test_non_finite_findings_form_their_own_region(rays_state):
    state = rays_state
    findings = _findings_at(state, [[10.0, 0.0]])
    nan = dataclasses.replace(findings[0], kind="non-finite", loss=math.nan, loss_ratio=math.nan, details={})
    regions, _ = group_regions(findings + [nan], state.verifier, state.baseline)
    assert sorted(r.kind for r in regions) == ["input pocket", "non-finite"]
    assert "1 critical non-finite region at" in describe(regions, 2)


def test_describe_words():
    f = Finding(
        kind="certificate",
        probe="affine",
        severity="critical",
        loss=0.0,
        loss_ratio=0.0,
        loss_ratio_min=0.0,
        distance=10.0,
        distance_ratio=4.0,
        verified=True,
        nearest_index=0,
        details={"blind_dimension": 2, "blind_distance_ratio": 29756.2, "unbounded": False},
    )
    subspace = _region([0], [f], "subspace")
    assert subspace.describe() == "critical subspace of dimension 2 reaching 2.98e4·s"
    assert _region([0], [dataclasses.replace(f, details={**f.details, "unbounded": True})], "subspace").describe() == (
        "critical subspace of dimension 2, unbounded"
    )
    near = dataclasses.replace(f, kind="adversarial", severity="high", distance_ratio=3.14, details={})
    pocket = _region([0, 1], [dataclasses.replace(f, kind="adversarial", details={}), near], "latent pocket")
    assert pocket.describe() == "critical latent pocket at 3.1–4·s"
    assert pocket.severity_counts == {"critical": 1, "high": 1, "warning": 0}
    assert describe([subspace, pocket], 4717) == (
        "2 blind regions (1 critical subspace of dimension 2 reaching "
        "2.98e4·s; 1 critical latent pocket at 3.1–4·s), 4717 witnesses"
    )
    many = describe([subspace, pocket, pocket, dataclasses.replace(pocket, severity="warning"), pocket], 9)
    assert many.startswith("5 blind regions (") and many.endswith("; 2 more: 1 critical, 1 warning), 9 witnesses")


# ----------------------------------------------------------------------------- end to end
def test_scan_of_two_blind_rays_reports_two_ray_regions():
    config = ScanConfig().with_overrides(
        device="cpu", quiet=True, effort="quick", probes=("far-field", "random"), seed=0
    )
    result = scan(Rays(), ray_data(), config)
    assert result.exit_code() == 1
    # warnings may also turn up in gaps between reference samples; the blind spots are the two rays
    blind = [r for r in result.regions if r.severity != "warning"]
    assert len(blind) == 2 and {r.kind for r in blind} == {"ray"} and all(r.unbounded for r in blind)
    assert sorted(int(np.argmax(np.abs(r.witness.x))) for r in blind) == [0, 1]  # one per positive half-axis
    assert all(r.n_witnesses > 100 and r.probes == ["far-field", "random"] for r in blind)
    assert result.verdict.startswith("FAIL: 2 blind regions (1 critical ray, unbounded; 1 critical ray, unbounded)")
    report = result.to_dict()
    assert [r["label"] for r in report["regions"]] == ["R1", "R2"]
    counts = report["counts"]
    assert sum(r["witnesses"] for r in report["regions"]) == counts["verified"]
    assert counts["verified"] == len(report["findings"]) + counts["merged_duplicates"]
    assert all(f["details"]["region"] in (1, 2) for f in report["findings"])
    again = scan(Rays(), ray_data(), config).to_dict()
    assert [(r["description"], r["witnesses"]) for r in again["regions"]] == [
        (r["description"], r["witnesses"]) for r in report["regions"]
    ]


@pytest.fixture(scope="module")
def linear_models(tmp_path_factory) -> Path:
    """The shipped linear examples, trained as the demo trains them (``examples/train_linear.py``)."""
    out = tmp_path_factory.mktemp("linear")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLES))
        mp.setattr(sys, "argv", ["train_linear", "--out", str(out)])
        threads = torch.get_num_threads()
        try:
            importlib.import_module("train_linear").main()
        finally:
            torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", ["linear_pca", "linear_gd"])
def test_each_shipped_linear_autoencoder_is_one_subspace_region(name, linear_models):
    config = ScanConfig().with_overrides(
        arch="mlp:8,2,8", device="cpu", quiet=True, effort="quick", probes=("affine", "grid", "random")
    )
    result = scan(linear_models / f"{name}.pt", linear_models / "linear_data.npy", config)
    assert len(result.regions) == 1
    region = result.regions[0]
    assert region.kind == "subspace" and region.dimension == 2 and region.severity == "critical"
    assert region.n_witnesses == result.counts["verified"] > 100  # thousands of points, one region
    assert {"affine", "grid"} <= set(region.probes) and region.certificates == 1
    assert region.witness.x is not None and region.witness.nearest is not None  # kept with its arrays
    assert result.verdict.startswith("FAIL: 1 blind region (1 critical subspace of dimension 2")
    assert f"{result.counts['verified']} witnesses" in result.verdict
    assert result.to_dict()["regions"][0]["witness"]["x"] is not None


# ----------------------------------------------------------------------------- the warning severity
def test_warning_severity_between_s_and_delta(rays_state):
    b = rays_state.baseline
    assert b.severity(b.tau_min, b.min_distance) == "critical"
    assert b.severity(b.tau_op, b.min_distance) == "high"
    assert b.severity(b.tau_min, b.scale) == "warning"  # s ≤ d < δ and as low as the lowest normal loss
    assert b.severity(b.tau_op, b.scale) is None  # between s and δ only a loss ≤ τ_min counts
    assert b.severity(b.tau_min, 0.99 * b.scale) is None


def _report_with_a_warning(rays_state) -> dict:
    """A report with one finding on a blind ray between s and δ beyond the end of the normal data."""
    state = rays_state
    b = state.baseline
    t = np.linspace(1.0, 3.0, 2001)
    d, _ = state.verifier.neighbours.query(torch.tensor(np.stack([t, 0 * t], 1)))
    pick = int(np.argmin(np.abs(d.numpy() - (b.scale + b.min_distance) / 2)))
    findings = _findings_at(state, [[t[pick], 0.0]])
    assert [f.severity for f in findings] == ["warning"]
    regions, grouping = group_regions(findings, state.verifier, b)
    return {
        "schema_version": "1.1",
        "verdict": "PASS: 1 blind region (…), all below the gate (gate --fail-on high)",
        "status": "complete",
        "gate": {"fail_on": "high", "failed": False, "exit_code": 0},
        "thresholds": b.summary(),
        "data": {"sample_shape": [2]},
        "probes": [
            {"probe": "random", "kind": "search", "status": "complete", "reason": "", "evaluations": 1, "seconds": 0.1}
        ],
        "counts": {"verified": 1, "warning": 1},
        "regions": [r.to_dict() for r in regions],
        "region_grouping": grouping,
        "findings": [f.to_dict() for f in findings],
        "errors": [],
    }


def test_warnings_show_in_every_output_and_fail_only_the_warning_gate(rays_state):
    report = _report_with_a_warning(rays_state)
    root = ET.fromstring(to_junit(report))
    case = root.find("./testsuite[@name='aeaudit.regions']/testcase")
    assert case.get("name").startswith("R1 ") and case.find("failure") is None
    assert "warning" in case.find("system-out").text and root.get("failures") == "0"
    report["gate"]["fail_on"] = "warning"
    failure = ET.fromstring(to_junit(report)).find("./testsuite[@name='aeaudit.regions']/testcase/failure")
    assert failure is not None and "warning" in failure.get("message")
    assert "| R1 | warning |" in to_markdown(report)
    html = render_html(report)
    verdict, gallery = html.split('<section id="verdict">')[1], html.split('<section id="gallery">')[1]
    assert 'class="sev-warning">warning' in verdict.split("</section>")[0]  # the regions table under the verdict
    card = gallery.split("</section>")[0]
    assert 'class="card region region-warning" id="region-R1"' in card and "nearest normal" in card
