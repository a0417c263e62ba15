"""The report writers: HTML (sections, offline, re-rendering), JUnit, Markdown, the settings file and `aeaudit report`.

One CLI scan of the projection autoencoder ``f(a, b) = (a, 0)`` (blind along the first axis at
any distance) feeds most tests; hand-built report dicts cover the image gallery, the scorer
table and the "did not run" wording.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import PROJECTION_ARCH, save_projection_case
from typer.testing import CliRunner

from aeaudit.cli import app
from aeaudit.config_file import find_config
from aeaudit.errors import InputError
from aeaudit.report import read_json
from aeaudit.report.findings_views import FOLDED_MAX, GALLERY_MAX
from aeaudit.report.html import SECTIONS, render_html
from aeaudit.report.junit import to_junit
from aeaudit.report.markdown import to_markdown

PROBES_RUN = ("pca-reference", "affine", "far-field", "grid", "random")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Sections, images, links, scripts and the text of each section; checks that tags nest."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.sections: list[str] = []
        self.images: list[tuple[str | None, str]] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.scripts: list[dict] = []
        self.text: dict[str, str] = {}
        self.stack: list[str] = []
        self.current: str | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attributes += [(tag, k, v or "") for k, v in attrs]
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "section":
            self.current = a.get("id")
            self.sections.append(self.current)
            self.text[self.current] = ""
        elif tag == "img":
            self.images.append((self.current, a.get("src", "")))
        elif tag == "script":
            self.scripts.append(a)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.text[self.current] += data

    def images_in(self, section: str) -> list[str]:
        return [src for s, src in self.images if s == section]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """One scan through the CLI, in an empty folder, writing every report form."""
    root = tmp_path_factory.mktemp("scan")
    model, data = save_projection_case(root / "case")
    rng = np.random.default_rng(1)
    np.save(root / "anomalies.npy", np.stack([rng.uniform(-3, 3, 30), rng.normal(0, 1.0, 30)], 1).astype(np.float32))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = invoke(
            "scan",
            model,
            "--arch",
            PROJECTION_ARCH,
            "--data",
            data,
            "--anomalies",
            root / "anomalies.npy",
            "--probes",
            ",".join(PROBES_RUN),
            "--effort",
            "quick",
            "--device",
            "cpu",
            "--quiet",
            "-o",
            root / "out",
            "--junit",
            root / "out" / "junit.xml",
            "--markdown",
            root / "out" / "summary.md",
        )
    assert result.exit_code == 1, result.output  # the projection AE is blind along its first axis
    out = root / "out"
    return {
        "root": root,
        "out": out,
        "report": read_json(out / "report.json"),
        "html": (out / "report.html").read_text(encoding="utf-8"),
    }


# ----------------------------------------------------------------------------- HTML
def test_html_parses_and_shows_every_section_with_data(scanned):
    report, page = scanned["report"], Page(scanned["html"])
    assert page.stack == [], f"unclosed tags: {page.stack}"
    assert page.sections == [sid for sid, _ in SECTIONS]
    outcome, _, rest = report["verdict"].partition(": ")  # the banner shows the outcome word large, then the rest
    assert outcome == report["outcome"] == "FAIL" and rest in page.text["verdict"]
    for p in report["probes"]:  # every check is listed with its status
        assert p["probe"] in page.text["verdict"] and p["status"] in page.text["verdict"]
    assert f"{report['thresholds']['tau_op']:.4g}" in page.text["model"]
    assert len(page.images_in("losses")) == 1  # held-out, findings and the user's anomalies in one histogram
    assert "No anomalies of your own" not in page.text["losses"]
    # the affine check certifies the blind first axis; its loss-vs-distance plot and the latent map are drawn
    assert any(f["kind"] == "certificate" and f["probe"] == "affine" for f in report["findings"])
    assert len(page.images_in("certificates")) == 1 and "affine" in page.text["certificates"]
    eigenvalues = report["artifacts"]["affine"]["eigenvalues_near_1"]  # to 7 digits: 0.9997 must not read as 1
    assert ", ".join(f"{v:.7g}" for v in eigenvalues) in page.text["certificates"]
    assert "loss_map" in report["artifacts"]["grid"] and len(page.images_in("latent-map")) == 1
    # the blind axis is one region, listed under the verdict, with a card in the gallery
    assert [r["kind"] for r in report["regions"]] == ["subspace"] and report["regions"][0]["dimension"] == 1
    assert report["regions"][0]["summary"] in page.text["verdict"]
    # tabular data: the region's card and each folded witness list the features that depart most from the
    # nearest normal sample
    with_x = [f for f in report["findings"] if f.get("x") is not None]
    assert with_x and all(f.get("nearest") is not None for f in with_x)
    assert report["regions"][0]["witness"]["nearest"] is not None
    assert page.text["gallery"].count("nearest normal") >= 1 + min(FOLDED_MAX, len(with_x) - 1)
    assert "seed" in page.text["reproducibility"] and report["tool"]["version"] in page.text["reproducibility"]
    assert report["data"]["sha256"] in page.text["reproducibility"]


def test_html_loads_nothing_from_outside(scanned):
    page = Page(scanned["html"])
    for tag, name, value in page.attributes:
        if name in ("src", "href"):
            assert value.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,", "#")), (
                tag,
                name,
                value[:60],
            )
        assert not re.search(r"https?://", value), (tag, name, value[:80])
    assert page.scripts == []
    assert "url(" not in scanned["html"] and "@import" not in scanned["html"]
    assert "<link" not in scanned["html"]


@pytest.mark.slow
def test_rerendering_saved_json_in_a_new_process_gives_identical_html(scanned):
    out = scanned["out"]
    again = out / "again.html"
    proc = subprocess.run(
        [sys.executable, "-m", "aeaudit", "report", str(out / "report.json"), "-o", str(again)],
        cwd=scanned["root"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert again.read_bytes() == (out / "report.html").read_bytes()


def test_a_report_without_optional_data_says_what_did_not_run(scanned):
    report = copy.deepcopy(scanned["report"])
    report["probes"] = [
        {
            "probe": "grid",
            "kind": "search",
            "status": "skipped",
            "reason": "needs an encoder/decoder split",
            "evaluations": 0,
            "seconds": 0.0,
        }
    ]
    report["findings"], report["regions"], report["artifacts"], report["scorers"] = [], [], {}, {}
    report["settings"]["scorers"] = []
    page = Page(render_html(report))
    assert page.sections == [sid for sid, _ in SECTIONS]
    assert "did not run — needs an encoder/decoder split" in page.text["latent-map"]
    assert "No analytic check was part of this scan" in page.text["certificates"]
    assert "No blind region found" in page.text["gallery"]
    assert "No scorer was selected" in page.text["scorers"]
    assert page.images_in("latent-map") == [] and page.images_in("gallery") == []


def test_image_gallery_and_scorer_table(scanned):
    """Image-shaped samples get input / reconstruction / nearest / |difference| pictures, the region's witness
    first and its other stored witnesses folded under it; scorers a table and ROC."""
    report = copy.deepcopy(scanned["report"])
    report["data"]["sample_shape"] = [1, 4, 4]
    report["thresholds"]["domain"] = {"low": 0.0, "high": 1.0, "mode": "auto", "reason": "[0, 1]"}
    ramp = (np.arange(16) / 15.0).tolist()
    template = {k: v for k, v in report["findings"][0].items() if k not in ("x", "reconstruction", "nearest")}
    template["details"] = {"region": 1}
    pictured = [
        {**template, "loss": 0.1 * i, "x": ramp, "reconstruction": ramp[::-1], "nearest": [0.5] * 16} for i in range(3)
    ]
    report["findings"] = pictured + [template] * 2
    report["regions"][0]["witness"] = pictured[0]
    report["scorers"] = {
        "status": "complete",
        "table": [
            {
                "scorer": "recon",
                "threshold": 0.1,
                "transferred_detection_rate": 0.0,
                "auroc": 0.5,
                "adaptive_findings": 3,
                "verdict": "blind spots remain",
            },
            {
                "scorer": "toll",
                "posthoc": True,
                "threshold": 2.0,
                "transferred_detection_rate": 1.0,
                "auroc": 0.99,
                "adaptive_findings": 0,
                "verdict": "closes the gap",
            },
        ],
        "roc": {"recon": {"fpr": [0, 0.5, 1], "tpr": [0, 0.5, 1]}, "toll": {"fpr": [0, 0.01, 1], "tpr": [0, 0.99, 1]}},
    }
    page = Page(render_html(report))
    assert len(page.images_in("gallery")) == 3  # the witness, then the two other pictured findings folded
    assert "feature" not in page.text["gallery"].split("All findings")[0]  # pictures, not feature tables
    assert len(page.images_in("scorers")) == 1
    assert "closes the gap" in page.text["scorers"] and "blind spots remain" in page.text["scorers"]


# ----------------------------------------------------------------------------- JUnit and Markdown
def _suites(xml_text: str) -> tuple[ET.Element, ET.Element, ET.Element]:
    root = ET.fromstring(xml_text.encode("utf-8"))
    assert root.tag == "testsuites"
    return root, root.find("./testsuite[@name='aeaudit.regions']"), root.find("./testsuite[@name='aeaudit.checks']")


def test_junit_parses_one_case_per_region_then_one_per_check(scanned):
    report = scanned["report"]
    root, regions, checks = _suites((scanned["out"] / "junit.xml").read_text(encoding="utf-8"))
    cases = regions.findall("testcase")
    assert [c.get("name") for c in cases] == [f"{r['label']} {r['summary']}" for r in report["regions"]]
    gated = [r for r in report["regions"] if r["severity"] in ("critical", "high")]  # --fail-on high
    failures = [c.find("failure") for c in cases if c.find("failure") is not None]
    assert len(failures) == len(gated) > 0 and int(regions.get("failures")) == int(root.get("failures")) == len(gated)
    assert str(report["regions"][0]["witnesses"]) in failures[0].get("message")
    assert "representative witness" in failures[0].text
    assert [c.get("name") for c in checks.findall("testcase")] == [p["probe"] for p in report["probes"]]
    assert all(c.find("failure") is None for c in checks.findall("testcase"))  # a blind spot fails once, by region
    assert int(checks.get("skipped")) == sum(p["status"] == "skipped" for p in report["probes"])
    assert int(root.get("tests")) == len(cases) + len(report["probes"])


def test_junit_follows_the_gate_and_reports_skips_and_errors(scanned):
    report = copy.deepcopy(scanned["report"])
    report["gate"]["fail_on"] = "never"
    assert _suites(to_junit(report))[0].get("failures") == "0"
    report["gate"]["fail_on"] = "critical"
    assert int(_suites(to_junit(report))[0].get("failures")) == sum(
        r["severity"] == "critical" for r in report["regions"]
    )
    report["regions"] = []
    _, regions, _ = _suites(to_junit(report))
    assert [c.get("name") for c in regions.findall("testcase")] == ["no blind region at or above the gate"]
    report["probes"] += [
        {"probe": "pgd-latent", "kind": "search", "status": "skipped", "reason": "no latent"},
        {"probe": "broken", "kind": "search", "status": "error", "reason": "RuntimeError: boom"},
    ]
    root = ET.fromstring(to_junit(report))
    assert root.find("./testsuite/testcase[@name='pgd-latent']/skipped").get("message") == "no latent"
    assert root.find("./testsuite/testcase[@name='broken']/error").get("message") == "RuntimeError: boom"
    assert int(root.get("errors")) == 1 and int(root.get("skipped")) >= 1


def test_reports_written_before_regions_get_one_region_per_finding(scanned):
    report = copy.deepcopy(scanned["report"])
    del report["regions"]
    _, regions, _ = _suites(to_junit(report))
    assert len(regions.findall("testcase")) == len(report["findings"])
    html = render_html(report)
    assert Page(html).stack == []
    assert html.count('class="card region ') == min(GALLERY_MAX, len(report["findings"])) > 0


def test_markdown_summary_is_short_and_states_the_verdict(scanned):
    report = scanned["report"]
    text = (scanned["out"] / "summary.md").read_text(encoding="utf-8")
    assert text == to_markdown(report)
    assert text.splitlines()[0].startswith("### ❌ aeaudit: FAIL")
    for p in report["probes"]:
        assert f"| {p['probe']} | {p['status']} |" in text
    region_rows = [line for line in text.splitlines() if re.match(r"\| R\d+ \|", line)]
    assert len(region_rows) == min(5, len(report["regions"])) > 0
    assert f"| R1 | {report['regions'][0]['severity']} | {report['regions'][0]['summary']} |" in text
    assert len(text.splitlines()) < 40


# ----------------------------------------------------------------------------- settings file
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_settings_file_is_found_and_flags_override_it(tmp_path, monkeypatch):
    model, data = save_projection_case(tmp_path / "case")
    _write(
        tmp_path / "cfg" / "aeaudit.toml",
        f"""
model = "../case/{model.name}"
arch = "{PROJECTION_ARCH}"
data = "../case/{data.name}"
probes = ["random"]
probe-settings = ["samples=300", "random.batch_size=100"]
time-limit = 100
seed = 5
fail-on = "never"
quiet = true
out = "from-file"
""",
    )
    monkeypatch.chdir(tmp_path / "cfg")
    result = invoke("scan")  # everything from ./aeaudit.toml, relative paths from its folder
    assert result.exit_code == 0, result.output
    report = read_json(tmp_path / "cfg" / "from-file" / "report.json")
    assert (report["seed"], report["gate"]["fail_on"], report["settings"]["probes"]) == (5, "never", ["random"])
    assert report["settings"]["config_file"].endswith("aeaudit.toml")
    assert report["settings"]["probe_settings"] == {"samples": 300, "random": {"batch_size": 100}}
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "scan", "--config", tmp_path / "cfg" / "aeaudit.toml", "--fail-on", "high", "--seed", "1", "-o", "cli"
    )
    assert result.exit_code == 1, result.output  # the flag's gate applies: the blind axis fails it
    report = read_json(tmp_path / "cli" / "report.json")
    assert (report["seed"], report["gate"]["fail_on"], report["settings"]["time_limit"]) == (1, "high", 100.0)


def test_unknown_or_mistyped_settings_exit_2_naming_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "x"\n[tool.aeaudit]\nseed = 1\nbogus = 2\n"probe-strength" = 3\n',
    )
    result = invoke("scan", "--data", "missing.npy", "model.pt")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith("aeaudit: error:") and "\n" not in line
    assert "bogus" in line and "probe-strength" in line and "pyproject.toml" in line
    assert not (tmp_path / "aeaudit-out").exists()
    _write(tmp_path / "pyproject.toml", '[tool.aeaudit]\nseed = "abc"\n')
    result = invoke("scan", "--data", "missing.npy", "model.pt")
    assert result.exit_code == 2 and "seed = 'abc'" in result.stderr and "integer" in result.stderr


def test_find_config_order_and_errors(tmp_path):
    assert find_config(cwd=tmp_path)[0] is None
    _write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    assert find_config(cwd=tmp_path)[0] is None  # a pyproject without [tool.aeaudit] is ignored
    _write(tmp_path / "pyproject.toml", "[tool.aeaudit]\nseed = 2\n")
    path, settings, _ = find_config(cwd=tmp_path)
    assert path.name == "pyproject.toml" and settings == {"seed": 2}
    _write(tmp_path / "aeaudit.toml", "seed = 3\n")
    path, settings, _ = find_config(cwd=tmp_path)
    assert path.name == "aeaudit.toml" and settings == {"seed": 3}
    with pytest.raises(InputError, match="no \\[tool.aeaudit\\] table"):
        find_config(_write(tmp_path / "other" / "pyproject.toml", '[project]\nname = "x"\n'))
    with pytest.raises(InputError, match="not valid TOML"):
        find_config(_write(tmp_path / "bad.toml", "seed = \n"))


# ----------------------------------------------------------------------------- aeaudit report
def test_report_command_rejects_what_is_not_a_report(tmp_path):
    result = invoke("report", tmp_path / "missing.json")
    assert result.exit_code == 2 and "cannot read" in result.stderr
    _write(tmp_path / "x.json", json.dumps({"hello": 1}))
    result = invoke("report", tmp_path / "x.json")
    assert result.exit_code == 2 and "schema_version" in result.stderr


# ----------------------------------------------------------------------------- screenshot
@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium binary")
def test_screenshot_in_headless_chromium(scanned, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1280,1600",
                (scanned["out"] / "report.html").as_uri(),
            ],
            capture_output=True,
            timeout=120,
        )
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (1600, 1280)
    # the verdict banner (FAIL: red, #b3261e) is drawn near the top of the page
    red = (
        (abs(image[:400, :, 0] - 0xB3) < 12)
        & (abs(image[:400, :, 1] - 0x26) < 12)
        & (abs(image[:400, :, 2] - 0x1E) < 12)
    )
    assert red.sum() > 20_000
    assert image.std() > 20  # not a blank page


def test_terminal_summary_verdict_first_and_scorer_table_with_the_users_anomalies(scanned):
    import io

    from rich.console import Console

    from aeaudit.report.terminal import render_summary

    report, buffer = scanned["report"], io.StringIO()
    render_summary(report, Console(file=buffer, width=120, highlight=False))
    text = buffer.getvalue()
    assert text.splitlines()[0] == report["verdict"]
    row = report["scorers"]["table"][0]
    assert row["anomalies_auroc"] is not None and "anomalies" in text  # the column is shown (its header may wrap)
    assert f"{row['anomalies_auroc']:.3f}" in text  # three decimals: 0.9999 must not read as 1
    for r in report["regions"][:10]:  # the regions, right under the verdict
        assert r["label"] in text and r["severity"] in text
    assert text.index("blind regions") < text.index("checks")
