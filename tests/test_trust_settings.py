"""Trust comes only from the person running the scan; model-controlled text stays inert in Markdown."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from crafted import CreatesFile
from helpers import gaussian_data, trained_toy
from typer.testing import CliRunner

from aeaudit.cli import app
from aeaudit.report.markdown import to_markdown

FAST = ["--probes", "random", "--scorers", "", "--effort", "quick", "--device", "cpu", "--fail-on", "never"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A folder as a CI job would check it out: a pickled model, normal data, and settings beside them."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "normal.npy", gaussian_data(64, seed=1))
    torch.save(trained_toy(), tmp_path / "model.pt")  # a pickled nn.Module: loads only with trust
    return tmp_path


@pytest.mark.parametrize(
    "settings_file, text",
    [
        ("aeaudit.toml", "trust-checkpoint = true\n"),
        ("pyproject.toml", "[tool.aeaudit]\ntrust-checkpoint = true\n"),
    ],
)
def test_trust_in_a_found_settings_file_is_refused(checkout, settings_file, text):
    (checkout / settings_file).write_text(text)
    evil = checkout / "evil.pt"
    marker = checkout / "marker"
    evil.write_bytes(pickle.dumps({"state_dict": CreatesFile(marker)}))
    result = invoke("scan", evil, "--data", "normal.npy", "--out", "out", *FAST)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "trust-checkpoint" in line and "--config" in line
    assert not marker.exists() and not (checkout / "out").exists()


def test_trust_from_a_named_settings_file_or_the_command_line_is_honoured(checkout):
    (checkout / "aeaudit.toml").write_text("trust-checkpoint = true\n")
    named = invoke("scan", "model.pt", "--data", "normal.npy", "--out", "o1", "--config", "aeaudit.toml", *FAST)
    assert named.exit_code == 0, named.output
    (checkout / "aeaudit.toml").write_text("seed = 1\n")
    flag = invoke("scan", "model.pt", "--data", "normal.npy", "--out", "o2", "--trust-checkpoint", *FAST)
    assert flag.exit_code == 0, flag.output
    refused = invoke("scan", "model.pt", "--data", "normal.npy", "--out", "o3", *FAST)
    assert refused.exit_code == 2 and "--trust-checkpoint" in refused.stderr


def test_an_arch_file_in_a_found_settings_file_is_not_imported(checkout):
    marker = checkout / "marker"
    (checkout / "arch.py").write_text(f"open({str(marker)!r}, 'w').close()\n\ndef build():\n    pass\n")
    torch.save(trained_toy().state_dict(), checkout / "sd.pt")
    (checkout / "aeaudit.toml").write_text('arch = "arch.py:build"\n')
    result = invoke("scan", "sd.pt", "--data", "normal.npy", "--out", "out", *FAST)
    assert result.exit_code == 2 and "arch" in result.stderr and "--config" in result.stderr
    assert not marker.exists()
    (checkout / "aeaudit.toml").write_text('arch = "mlp:2,5,1,5,2"\n')  # the built-in spec runs no code
    assert invoke("scan", "sd.pt", "--data", "normal.npy", "--out", "out", *FAST).exit_code == 0


HOSTILE = "boom <img src=x onerror=alert(1)> ```\n# heading [click](https://evil.example) @org/team *bold* | cell"


def test_markdown_escapes_model_controlled_text():
    report = {
        "verdict": "ERROR: " + HOSTILE,
        "status": "complete",
        "gate": {"failed": False, "fail_on": "high"},
        "probes": [{"probe": "random", "status": "error", "reason": HOSTILE}],
        "findings": [],
        "errors": [HOSTILE],
        "thresholds": {},
        "seed": 0,
        "tool": {"version": "0"},
    }
    text = to_markdown(report)
    for raw in ("<img", "```", "[click](", "@org", " *bold*", "\n# heading"):
        assert raw not in text, raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "&#96;&#96;&#96;" in text
    row = next(line for line in text.splitlines() if line.startswith("| random"))
    assert row.count(" | ") == 3  # the hostile "|" did not open a fifth column
