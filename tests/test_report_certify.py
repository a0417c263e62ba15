"""The verdict's five faces and the certification section in every report writer (issues 12 and 14).

Real scans of tiny models give each outcome: the constant autoencoder on a densely covered disc is
a certified PASS (with the certify check) or a search PASS (without it); cut short by a 1 ms time
limit it is INCONCLUSIVE; with its search crashing, ERROR; the projection autoencoder
``f(a, b) = (a, 0)`` (blind along its first axis) is a FAIL whose certify boxes are falsified there.
"""

from __future__ import annotations

import copy
import io
import json
import re
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from helpers import constant_ae, line_data, projection_ae
from rich.console import Console
from test_report import Page
from test_search import disc_data

import aeaudit
from aeaudit.bounds.bab import box_coordinates
from aeaudit.probes.random_search import RandomSearch
from aeaudit.report import certify_plots
from aeaudit.report.certification import STATES, outcome_kind, percent
from aeaudit.report.certification_views import HINTS, box_corners, certification_view
from aeaudit.report.fmt import normalise
from aeaudit.report.html import TEMPLATES, render_html
from aeaudit.report.junit import CLEAR_CASE, to_junit
from aeaudit.report.markdown import escape, to_markdown
from aeaudit.report.terminal import render_summary
from aeaudit.report.views import verdict_view
from aeaudit.zoo import MLPAutoencoder

QUICK = dict(scorers=(), device="cpu", quiet=True, effort="quick")


def plane_ae() -> MLPAutoencoder:
    """``f(a, b, c) = (a, b, 0)``: a linear autoencoder with a 2-D latent space, blind on the plane c = 0."""
    model = MLPAutoencoder([3, 2, 3])
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(3)[:2])
        model.encoder[0].bias.zero_()
        model.decoder[0].weight.copy_(torch.eye(3)[:, :2])
        model.decoder[0].bias.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def reports():
    """One report dict (as report.json reads back) per outcome."""
    disc = disc_data()
    out = {
        "certified": aeaudit.scan(constant_ae(), disc, probes=("random", "grid", "certify"), **QUICK),
        "pass": aeaudit.scan(constant_ae(), disc, probes=("random",), **QUICK),
        "inconclusive": aeaudit.scan(constant_ae(), disc, probes=("random", "certify"), time_limit=1e-3, **QUICK),
        "fail": aeaudit.scan(projection_ae(), line_data(200), probes=("grid", "certify"), **QUICK),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RandomSearch, "_run", lambda self, ctx: 1 / 0)
        out["error"] = aeaudit.scan(constant_ae(), disc, probes=("random",), **QUICK)
    return {kind: normalise(result.to_dict()) for kind, result in out.items()}


def terminal(report: dict, colour: bool = False) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, force_terminal=colour, color_system="truecolor" if colour else None)
    render_summary(report, console)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- each outcome, each writer
def test_the_scans_give_each_outcome(reports):
    assert {k: (r["outcome"], r["certified"]) for k, r in reports.items()} == {
        "certified": ("PASS", True),
        "pass": ("PASS", False),
        "inconclusive": ("INCONCLUSIVE", False),
        "fail": ("FAIL", False),
        "error": ("ERROR", False),
    }
    assert {k: outcome_kind(r) for k, r in reports.items()} == {k: k for k in reports}
    assert reports["certified"]["certification"] == {"input": True, "latent": True}


@pytest.fixture(scope="module")
def pages(reports):
    """The HTML of the certified PASS (its other figures left out, to keep the test fast) and of the FAIL."""
    certified = copy.deepcopy(reports["certified"])
    certified["artifacts"] = {"certify": certified["artifacts"]["certify"]}
    certified["thresholds"].pop("heldout_loss_sample")
    return {"certified": render_html(certified), "fail": render_html(reports["fail"])}


def test_html_banner_shows_each_outcome_distinctly(reports, pages):
    banners = {k: verdict_view(r) for k, r in reports.items()}
    assert {k: b["css"] for k, b in banners.items()} == {k: k for k in reports}
    assert {k: b["outcome"] for k, b in banners.items()} == {k: r["outcome"] for k, r in reports.items()}
    assert len({b["badge"] for b in banners.values()}) == 5
    template = (TEMPLATES / "report.html.j2").read_text(encoding="utf-8")
    css = template.split("<style>")[1].split("</style>")[0]
    root = dict(re.findall(r"(--[a-z]+): (#[0-9a-f]{6})", css.split(":root {")[1].split("}")[0]))
    colours = {k: re.search(rf"\.banner\.{k} {{ background: var\((--[a-z]+)\)", css).group(1) for k in reports}
    assert len({root[v] for v in colours.values()}) == 5, colours  # five background colours
    for kind, html in pages.items():
        assert html.count('class="banner ') == 1 and f'<div class="banner {kind}">' in html
    text = Page(pages["certified"]).text["verdict"]
    assert "certified — proven by bounds" in text
    # which region is proven, over which box, against which thresholds
    box = reports["certified"]["artifacts"]["certify"]["input"]["region"]
    assert f"every input in the input domain box [{box['low'][0]:.4g}, {box['high'][0]:.4g}]²" in text
    assert f"τ_op = {box['tau_op']:.4g}" in text and f"δ = {box['delta']:.4g}" in text
    assert "Proven for the latent map" in text and "Outside these boxes nothing is proven" in text
    basis = {k: " ".join(b["basis"]) for k, b in banners.items()}
    assert basis["pass"].startswith("Search evidence, not proof") and "Proven" not in basis["pass"]
    assert reports["inconclusive"]["stopped"] in basis["inconclusive"] and "Why inconclusive" in basis["inconclusive"]
    assert "1 check(s) crashed (random)" in basis["error"]
    assert basis["fail"] == ""


def test_markdown_icon_and_basis_per_outcome(reports):
    first = {k: to_markdown(r).splitlines()[0] for k, r in reports.items()}
    icons = {k: line.split(" ")[1] for k, line in first.items()}
    assert len(set(icons.values())) == 5, icons
    assert all(line.startswith(f"### {icons[k]} aeaudit: {reports[k]['outcome']}") for k, line in first.items())
    certified = to_markdown(reports["certified"])
    assert "- **Certified.** Proven for the input space" in certified
    assert "| input space | \\[-1, 1\\]² | " in certified and "| proven |" in certified
    assert "Search evidence, not proof" in to_markdown(reports["pass"])
    assert "Why inconclusive" in to_markdown(reports["inconclusive"])
    fail = to_markdown(reports["fail"])
    assert fail.count("| not proven |") == 2 and "certify: input space not proven" not in fail  # said once


def test_junit_properties_and_the_clear_case_per_outcome(reports):
    for kind, report in reports.items():
        root = ET.fromstring(to_junit(report))
        suite = root.find("./testsuite[@name='aeaudit.regions']")
        props = {p.get("name"): p.get("value") for p in suite.find("properties")}
        assert props["outcome"] == report["outcome"]
        assert props["certified"] == ("true" if kind == "certified" else "false")
        assert json.loads(props["certification"]) == report["certification"]
        clear = suite.find(f"./testcase[@name='{CLEAR_CASE}']")
        if kind == "fail":
            assert clear is None and int(suite.get("failures")) == len(report["regions"]) > 0
            continue
        skipped = clear.find("skipped")
        assert (skipped is not None) == (kind in ("inconclusive", "error")), kind
        if skipped is not None:
            assert skipped.get("message").startswith(f"{report['outcome']}: not established")
        assert clear.find("system-out").text.startswith(report["verdict"])
    certified = ET.fromstring(to_junit(reports["certified"]))
    assert "Proven for the input space" in certified.find(f".//testcase[@name='{CLEAR_CASE}']/system-out").text
    certify_case = ET.fromstring(to_junit(reports["fail"])).find(".//testcase[@name='certify']/system-out").text
    assert "certify: input space not proven" in certify_case and "certify: latent map not proven" in certify_case


def test_terminal_first_line_is_the_verdict_then_what_it_rests_on(reports):
    for kind, report in reports.items():
        lines = terminal(report).splitlines()
        assert " ".join(lines[:3]).startswith(report["verdict"][:60]), kind
    assert "Proven for the input space" in terminal(reports["certified"])
    assert "Search evidence, not proof" in terminal(reports["pass"])
    assert "Why inconclusive" in terminal(reports["inconclusive"])
    assert "certify: input space not proven" in terminal(reports["fail"])
    # a certified PASS is not styled like a search PASS
    prefix = {k: terminal(reports[k], colour=True).split(reports[k]["verdict"][:10])[0] for k in reports}
    assert len(set(prefix.values())) == 5, prefix


# ----------------------------------------------------------------------------- the certification section
def test_certification_section_states_regions_shares_effort_and_counterexamples(reports, pages):
    report = reports["fail"]
    page = Page(pages["fail"])
    text = page.text["certification"]
    view = certification_view(report)
    assert [r["space"] for r in view["regions"]] == ["input", "latent"]
    for region in view["regions"]:
        result = report["artifacts"]["certify"][region["space"]]
        shares = result["shares"]
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
        assert [row["share"] for row in region["shares"]] == [percent(shares[s]) for s in STATES]
        for row in region["shares"]:
            assert row["share"] in text
        assert not region["proven"] and shares["falsified"] > 0  # the blind axis: falsified, never certified
        assert f"{result['evaluations']:,} box evaluations" in text
        assert f"{result['counterexamples_found']:,} verified counterexample(s) found" in text
    assert "can an input in the normal data's per-feature range widened 3x" in text
    assert "can a latent code in the latent box" in text
    # the 2-D input plane and the 1-D latent line (under the latent map's loss curve) are drawn
    assert len(page.images_in("certification")) == 2
    assert "Top: the latent map's loss of the decode" in text
    assert "boxes over this latent box are drawn under Certification" in page.text["latent-map"]


def test_not_examined_regions_and_higher_dimensions_say_why():
    disc = disc_data()
    capped = aeaudit.scan(
        constant_ae(), disc, probes=("certify",), probe_settings={"certify": {"max_input_features": 1}}, **QUICK
    )
    report = normalise(capped.to_dict())
    assert report["certified"] is True and report["certification"] == {"latent": True}
    why = "2 input features > max_input_features 1"
    assert certification_view(report)["skipped"] == [
        {"space": "input space", "why": why, "hint": HINTS["input"]}  # with how to raise the limit
    ]
    assert f"The input space was not examined ({why})." in verdict_view(report)["basis"]  # the proof names its limits
    assert escape(why) in to_markdown(report) and why in terminal(report)
    flat = np.c_[disc, np.random.default_rng(0).normal(0, 0.05, len(disc))].astype(np.float32)
    plane = normalise(aeaudit.scan(plane_ae(), flat, probes=("grid", "certify"), **QUICK).to_dict())
    view = certification_view(plane)
    by_space = {r["space"]: r for r in view["regions"]}
    assert by_space["input"]["figure"] == {
        "error": "The boxes are not drawn: the input space has 3 dimensions (drawn for 1 or 2)."
    }
    assert by_space["latent"]["figure"]["src"].startswith("data:image/png;base64,")
    assert "Lines from the latent map" in by_space["latent"]["caption"]


def test_a_report_without_certification_still_renders(reports):
    report = copy.deepcopy(reports["certified"])
    report["artifacts"] = {}  # the other figures left out, to keep the test fast
    report["thresholds"].pop("heldout_loss_sample")
    report["probes"] = [p for p in report["probes"] if p["probe"] != "certify"]
    for key in ("outcome", "certified", "certification"):  # as a report written before them reads
        report.pop(key)
    assert outcome_kind(report) == "pass"
    page = Page(render_html(report))
    assert page.stack == []
    assert "The certify check was not part of this scan" in page.text["certification"]
    assert page.images_in("certification") == []
    assert to_markdown(report).startswith("### ✅ aeaudit: PASS")
    props = {p.get("name"): p.get("value") for p in ET.fromstring(to_junit(report)).iter("property")}
    assert (props["outcome"], props["certified"], props["certification"]) == ("PASS", "false", "{}")
    assert terminal(report).startswith(report["verdict"][:40])
    stopped = certification_view(reports["inconclusive"])  # the check ran out of time before examining anything
    assert stopped["regions"] == [] and stopped["note"].startswith("No region was examined — certify: incomplete")


# ----------------------------------------------------------------------------- boxes
def test_box_corners_match_branch_and_bound_bit_for_bit(reports):
    result = reports["fail"]["artifacts"]["certify"]["input"]
    low, high = result["region"]["low"], result["region"]["high"]
    for state in STATES:
        entry = result["boxes"][state]
        lo, hi = box_corners(low, high, entry)
        want_lo, want_hi = box_coordinates(
            torch.tensor(low, dtype=torch.float64),
            torch.tensor(high, dtype=torch.float64),
            torch.tensor(entry["level"]).reshape(-1, 2),
            torch.tensor(entry["index"]).reshape(-1, 2),
        )
        assert np.array_equal(lo, want_lo.numpy()) and np.array_equal(hi, want_hi.numpy())
    volume = sum(np.prod(np.subtract(*box_corners(low, high, result["boxes"][s])[::-1]), axis=1).sum() for s in STATES)
    assert volume == pytest.approx(np.prod(np.subtract(high, low)), rel=1e-12)  # the boxes tile the root box


def test_twenty_thousand_boxes_draw_in_one_collection_per_state():
    rng = np.random.default_rng(0)
    levels = rng.integers(5, 9, size=(20_000, 2))
    lo = rng.random((20_000, 2)) * (1 - np.ldexp(1.0, -levels))
    boxes = {s: (lo[i::4], (lo + np.ldexp(1.0, -levels))[i::4]) for i, s in enumerate(STATES)}
    start = time.perf_counter()
    src = certify_plots.certify_boxes(boxes, [0, 0], [1, 1], {s: s for s in STATES}, points=rng.random((50, 2)))
    assert src.startswith("data:image/png;base64,") and time.perf_counter() - start < 30
