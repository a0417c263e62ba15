"""What a verdict may claim (issue 12): distances to every normal sample, non-finite outputs and
negative thresholds, claims no stronger than the evidence, and failures reported in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import PROJECTION_ARCH, constant_ae, gaussian_data, line_data, projection_ae, trained_toy
from test_search import disc_data
from typer.testing import CliRunner

import aeaudit
from aeaudit.audit import prepare
from aeaudit.baseline import split_indices
from aeaudit.cli import app
from aeaudit.compare import compare
from aeaudit.config import ScanConfig
from aeaudit.findings import Candidates, prefilter, verify
from aeaudit.harden import HardenSettings, selection_split
from aeaudit.probes.random_search import RandomSearch
from aeaudit.report.json_report import to_json
from aeaudit.scorers import SCORERS, make_scorer
from aeaudit.verdict import Outcome, decide, exit_code


# --------------------------------------------------------------------------- the outcome rule
def test_outcomes_and_exit_codes():
    assert decide(["warning"], True, 0, "high") is Outcome.PASS
    assert decide(["warning"], True, 0, "warning") is Outcome.FAIL
    assert decide(["high"], False, 1, "high") is Outcome.FAIL  # verified findings stand, cut short or not
    assert decide([], True, 1, "high") is Outcome.ERROR
    assert decide([], False, 0, "high") is Outcome.INCONCLUSIVE
    assert decide(["critical"], True, 0, "never") is Outcome.PASS
    assert [exit_code(Outcome.INCONCLUSIVE, how) for how in ("inconclusive", "pass", "fail")] == [4, 0, 1]
    assert [exit_code(o) for o in Outcome] == [0, 1, 4, 3]


# --------------------------------------------------------------------------- item 3: every normal sample
def test_a_far_heldout_normal_row_is_never_reported():
    """A held-out normal row far along the projection AE's blind axis: the input PGD starts from
    held-out rows, so measuring "far" against the reference part alone reported it as critical."""
    data = line_data(300)
    _, held = split_indices(len(data), 0.2, 0)
    data[held[0]] = (40.0, 0.0)
    result = aeaudit.scan(
        projection_ae(), data, probes=("pgd-input",), scorers=(), device="cpu", quiet=True, effort="quick"
    )
    delta = result.thresholds["min_distance"]
    for f in result.findings:
        if f.x is not None:
            assert np.linalg.norm(data - f.x.reshape(1, -1), axis=1).min() >= delta * (1 - 1e-9)
        assert f.distance >= delta or f.severity == "warning"
    assert result.thresholds["distance_definition"].startswith("distance to the nearest of all normal samples")


# --------------------------------------------------------------------------- item 4: what a PASS can hide
class NaNFarAway(torch.nn.Module):
    """The projection AE whose output turns NaN beyond radius 10: far inputs score NaN, which a
    deployed ``score > τ`` test calls normal."""

    def __init__(self):
        super().__init__()
        self.inner = projection_ae()
        self.encoder, self.decoder = self.inner.encoder, self.inner.decoder

    def forward(self, x):
        return self.inner(x) + (100.0 - x.pow(2).sum(dim=1, keepdim=True)).sqrt() * 0.0


def test_non_finite_outputs_are_critical_findings():
    result = aeaudit.scan(
        NaNFarAway(),
        line_data(200),
        probes=("random",),
        scorers=(),
        device="cpu",
        quiet=True,
        bounds="-20,20",
        effort="quick",
    )
    odd = [f for f in result.findings if f.kind == "non-finite"]
    assert odd and all(f.severity == "critical" and f.verified for f in odd)
    assert all(f.details["non_finite"] == "output" and not np.isfinite(f.loss) for f in odd)
    assert all(np.linalg.norm(f.x) > 10 for f in odd if f.x is not None)
    assert result.outcome is Outcome.FAIL
    report = json.loads(to_json(result.to_dict()))  # NaN losses survive as text in report.json
    assert any(f["kind"] == "non-finite" and f["loss"] == "nan" for f in report["findings"])


def test_negative_thresholds_keep_valid_candidates():
    """A score below zero (GradCon's can be): loosening τ must move it up, never below τ."""
    state = prepare(projection_ae(), line_data(200), ScanConfig(quiet=True, scorers=()))
    far = torch.tensor([[50.0, 0.0], [-60.0, 0.0]])
    cands = Candidates(x=far, probe="test")
    screened, _ = prefilter(cands, state.adapter, state.baseline, lambda x: torch.full((len(x),), -0.6), -0.5)
    assert len(screened) == 2  # -0.6 ≤ τ = -0.5: both are blind spots of that score
    found = verify(
        screened,
        state.verifier,
        objective="neg",
        score_fn64=lambda x: torch.full((len(x),), -0.6),
        tau_min=-0.55,
        tau_op=-0.5,
    )
    assert [f.severity for f in found] == ["critical", "critical"]  # -0.6 ≤ τ_min = -0.55
    ctx = state.context(state.recon_objective())
    ctx.objective = type(ctx.objective)("neg", lambda x: torch.full((len(x),), -0.6), -0.7, -0.5)
    result = RandomSearch(samples=64).run(ctx)
    assert len(result.candidates) == 64  # every draw scores -0.6 ≤ τ: all kept


# --------------------------------------------------------------------------- item 5: no claim beyond evidence
def test_one_definition_of_tau_min_for_every_scorer():
    state = prepare(trained_toy(), gaussian_data(200), ScanConfig(quiet=True, scorers=()))
    b = state.baseline
    for name in SCORERS:
        s = make_scorer(name).fit(state.adapter, b.reference, b.heldout, 0.05)
        every = torch.cat([s.score_batched(b.reference), s.score_batched(b.heldout)]).double()
        assert s.min_normal_ == pytest.approx(float(every.min()), rel=1e-12), name
    assert b.tau_min == pytest.approx(float(state.adapter.losses(b.normal).double().min()), rel=1e-6)


def test_energy_search_uses_its_surrogates_own_threshold():
    state = prepare(trained_toy(), gaussian_data(200), ScanConfig(quiet=True, scorers=()))
    b = state.baseline
    s = make_scorer("energy").fit(state.adapter, b.reference, b.heldout, 0.05)
    search = s.search_objective()
    held = s._surrogate(b.heldout).detach().double().numpy()
    assert search.tau_op == pytest.approx(float(np.quantile(held, 0.95, method="higher")))
    assert search.tau_op != pytest.approx(s.threshold_)  # 5 unrolled steps are not the full projection
    x = b.heldout[:4].clone().requires_grad_(True)
    assert torch.autograd.grad(search.score(x).sum(), x)[0].abs().sum() > 0  # differentiable


def test_harden_never_selects_on_the_audits_heldout_part():
    n = 500
    reference, held = split_indices(n, 0.2, 3)
    train, select = selection_split(n, HardenSettings(seed=3))
    assert set(select).isdisjoint(held) and set(train).isdisjoint(held)
    assert set(select) | set(train) == set(reference) and set(select).isdisjoint(train)


def test_compare_claims_closed_only_when_every_check_ran(tmp_path):
    """Original: the projection AE (a blind axis). "Hardened": a model that outputs the data mean,
    which flags every far input. With the searches run, the gap is closed; with no search against
    the deployed score, or one cut short, the result is inconclusive — never CLOSED."""
    orig, hard = tmp_path / "o.pt", tmp_path / "h.pt"
    torch.save(projection_ae().state_dict(), orig)
    torch.jit.save(torch.jit.script(constant_ae()), str(hard))
    data = disc_data()  # densely covered: the mean-output model has no far low-loss input
    kw = dict(arch=PROJECTION_ARCH, scorers=("recon",), device="cpu", quiet=True, effort="quick")
    closed = compare(orig, hard, data, probes=("affine", "random"), **kw)
    assert closed["closed"] is True and closed["verdict"].startswith("CLOSED")
    assert closed["adaptive_evaluations"] > 0 and f"{closed['adaptive_evaluations']:,} evaluations" in closed["verdict"]
    unsearched = compare(orig, hard, data, probes=("affine",), **kw)  # no search against recon on the hardened model
    assert unsearched["closed"] is None and unsearched["verdict"].startswith("INCONCLUSIVE")
    assert unsearched["checks"]["adaptive_search_found_nothing"] is None
    cut = compare(orig, hard, data, probes=("affine", "random"), time_limit=1e-3, **kw)
    assert cut["closed"] is not True and not cut["verdict"].startswith("CLOSED")


# --------------------------------------------------------------------------- item 8: failures in one line
def test_a_probe_crash_is_one_line_on_stderr_and_whole_in_the_report(tmp_path, monkeypatch):
    def crash(self, ctx):
        raise RuntimeError("The following operation failed\n  Traceback of TorchScript\n  boom deep inside")

    monkeypatch.setattr(RandomSearch, "_run", crash)
    model, data = tmp_path / "m.pt", tmp_path / "d.npy"
    torch.jit.save(torch.jit.script(constant_ae()), str(model))
    np.save(data, gaussian_data(100))
    result = CliRunner().invoke(
        app,
        [
            "scan",
            str(model),
            "--data",
            str(data),
            "--probes",
            "random",
            "--scorers",
            "",
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "o"),
            "--quiet",
        ],
    )
    assert result.exit_code == 3
    assert "boom deep inside" not in result.stderr and result.stderr.count("\n") <= 1
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["outcome"] == "ERROR" and "boom deep inside" in report["probes"][0]["details"]


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",
        '{"schema_version": "2.0", "verdict": 3}',
        '{"schema_version": "2.0", "verdict": "x", "status": "complete"}',
        "{not json",
    ],
)
def test_report_on_a_malformed_report_json_exits_2(tmp_path, content):
    path = tmp_path / "report.json"
    path.write_text(content)
    result = CliRunner().invoke(app, ["report", str(path), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and result.stderr.startswith("aeaudit: error:") and result.stderr.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


def test_compare_replays_only_findings_at_or_above_the_gate(tmp_path, monkeypatch):
    """Findings below the gate (warnings; here also high ones under --fail-on critical) cannot hold
    a comparison open: only gate-level findings are replayed on the hardened model."""
    import aeaudit.compare as cmp

    seen = []
    real = cmp.replay_findings

    def spy(findings, *args, **kwargs):
        seen.extend(f.severity for f in findings)
        return real(findings, *args, **kwargs)

    monkeypatch.setattr(cmp, "replay_findings", spy)
    orig, hard = tmp_path / "o.pt", tmp_path / "h.pt"
    torch.save(projection_ae().state_dict(), orig)
    torch.jit.save(torch.jit.script(constant_ae()), str(hard))
    kw = dict(
        arch=PROJECTION_ARCH, scorers=("recon",), device="cpu", quiet=True, effort="quick", probes=("affine", "random")
    )
    out = compare(orig, hard, line_data(200), **kw)
    assert seen and set(seen) <= {"critical", "high"} and out["original_findings_on_hardened"]["n"] > 0
    seen.clear()
    out = compare(orig, hard, line_data(200), fail_on="never", **kw)  # every finding is below this gate
    assert any(f.x is not None for f in out["results"]["original"].findings)
    assert seen == [] and out["original_findings_on_hardened"]["n"] == 0


def test_adaptive_searches_take_the_users_settings_over_their_preset():
    from aeaudit.gaps import ADAPTIVE_SETTINGS, adaptive_probes

    config = ScanConfig(quiet=True, scorers=(), probe_settings={"steps": 7, "pgd-input": {"starts": 5}})
    state = prepare(projection_ae(), line_data(100), config)
    pgd_input, pgd_latent = adaptive_probes(state, ("pgd-input", "pgd-latent"))
    preset = ADAPTIVE_SETTINGS["standard"]
    assert (pgd_input.steps, pgd_input.starts, pgd_input.farthest_starts) == (7, 5, preset["farthest_starts"])
    assert (pgd_latent.steps, pgd_latent.starts) == (7, preset["starts"])
