"""The command line's contract: exit codes 0/1/2/3/4, one-line errors, nothing left behind, repeatable reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import PROJECTION_ARCH, line_data, projection_ae, save_constant_case, save_projection_case
from typer.testing import CliRunner

import aeaudit
from aeaudit.cli import app
from aeaudit.probes import make_probe
from aeaudit.report import read_json, strip_timings
from aeaudit.settings import parse_settings

# the random search alone, no scorer comparison: these tests pin down the CLI, not the strong searches
FAST = ["--probes", "random", "--scorers", "", "--effort", "quick", "--device", "cpu"]


@pytest.fixture
def cases(tmp_path, monkeypatch):
    """Run in an empty folder (no aeaudit.toml or pyproject.toml settings to pick up)."""
    monkeypatch.chdir(tmp_path)
    proj_model, proj_data = save_projection_case(tmp_path / "proj")
    const_model, const_data = save_constant_case(tmp_path / "const")
    return {"proj": (proj_model, proj_data), "const": (const_model, const_data), "dir": tmp_path}


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(result) -> str:
    text = result.stderr.strip()
    assert text.startswith("aeaudit: error:") and "\n" not in text, text
    assert "Traceback" not in result.output
    return text


# --------------------------------------------------------------------------- 0 / 1: the gate
def test_exit_1_on_a_blind_spot_and_0_with_fail_on_never(cases):
    model, data = cases["proj"]
    out = cases["dir"] / "o1"
    result = invoke("scan", model, "--data", data, "--arch", PROJECTION_ARCH, "--out", out, *FAST)
    assert result.exit_code == 1, result.output
    report = read_json(out / "report.json")
    gate = report["gate"]
    assert (gate["fail_on"], gate["failed"], gate["exit_code"], gate["outcome"]) == ("high", True, 1, "FAIL")
    assert report["outcome"] == "FAIL" and gate["levels"] == ["critical", "high"]
    assert report["counts"]["critical"] > 0 and report["status"] == "complete"
    top = report["findings"][0]
    assert top["verified"] and top["severity"] == "critical"
    assert top["distance_ratio"] >= 2.0 and top["loss"] <= report["thresholds"]["tau_min"]
    assert result.stdout.lstrip().startswith("FAIL") or "FAIL" in result.stdout.splitlines()[0]

    never = invoke(
        "scan",
        model,
        "--data",
        data,
        "--arch",
        PROJECTION_ARCH,
        "--out",
        cases["dir"] / "o2",
        "--fail-on",
        "never",
        "--quiet",
        *FAST,
    )
    assert never.exit_code == 0 and never.stdout == ""


def test_exit_0_when_no_blind_spot(cases):
    model, data = cases["const"]
    out = cases["dir"] / "o"
    result = invoke("scan", model, "--data", data, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    report = read_json(out / "report.json")
    assert report["findings"] == [] and report["verdict"].startswith("PASS")
    assert report["model"]["format"] == "torchscript"
    assert "PASS" in result.stdout and str(out / "report.json") in result.stdout


# --------------------------------------------------------------------------- 2: usage and input errors
BAD_INPUTS = {
    "missing model": (["scan", "{d}/nope.pt", "--data", "{proj_data}"], "not found"),
    "state_dict without --arch": (["scan", "{proj_model}", "--data", "{proj_data}"], "--arch"),
    "wrong --arch": (["scan", "{proj_model}", "--data", "{proj_data}", "--arch", "mlp:2,5,1,5,2"], "do not fit"),
    "NaN in data": (["scan", "{const_model}", "--data", "{d}/nan.npy"], "NaN or inf"),
    "empty data": (["scan", "{const_model}", "--data", "{d}/empty.csv"], "is empty"),
    "non-numeric data": (["scan", "{const_model}", "--data", "{d}/words.csv"], "non-numeric"),
    "truncated data": (["scan", "{const_model}", "--data", "{d}/trunc.npy"], "truncated"),
    "wrong width": (["scan", "{proj_model}", "--arch", PROJECTION_ARCH, "--data", "{d}/wide.npy"], "(3 values)"),
    "not an autoencoder": (["scan", "{d}/widen.pt", "--data", "{const_data}"], "differs from its input shape"),
    "bad --fail-on": (["scan", "{const_model}", "--data", "{const_data}", "--fail-on", "sometimes"], "--fail-on"),
    "bad --time-limit": (["scan", "{const_model}", "--data", "{const_data}", "--time-limit", "-1"], "--time-limit"),
    "NaN --time-limit": (["scan", "{const_model}", "--data", "{const_data}", "--time-limit", "nan"], "--time-limit"),
    "NaN --threshold": (["scan", "{const_model}", "--data", "{const_data}", "--threshold", "nan"], "--threshold"),
    "negative --min-distance": (
        ["scan", "{const_model}", "--data", "{const_data}", "--min-distance", "-1"],
        "--min-distance",
    ),
    "NaN --min-distance": (
        ["scan", "{const_model}", "--data", "{const_data}", "--min-distance", "nan"],
        "--min-distance",
    ),
    "bad --fpr": (["scan", "{const_model}", "--data", "{const_data}", "--fpr", "1.5"], "--fpr"),
    "bad --effort": (["scan", "{const_model}", "--data", "{const_data}", "--effort", "heroic"], "--effort"),
    "bad --inconclusive": (
        ["scan", "{const_model}", "--data", "{const_data}", "--inconclusive", "maybe"],
        "--inconclusive",
    ),
    "setting of the wrong type": (
        ["scan", "{const_model}", "--data", "{const_data}", "--probe-settings", "steps=abc"],
        "steps='abc': expected an integer",
    ),
    "setting out of range": (
        ["scan", "{const_model}", "--data", "{const_data}", "--probe-settings", "random.samples=0"],
        "samples = 0",
    ),
    "complex data": (["scan", "{const_model}", "--data", "{d}/complex.npy"], "complex"),
    "identical data": (["scan", "{const_model}", "--data", "{d}/same.npy"], "no spread"),
    "NaN output on normal data": (["scan", "{d}/nanout.pt", "--data", "{const_data}"], "output is NaN or inf"),
    "data beyond float32": (["scan", "{const_model}", "--data", "{d}/huge.npy"], "beyond float32"),
    "--out is a file": (["scan", "{const_model}", "--data", "{const_data}", "--out", "{d}/afile.txt"], "is a file"),
    "--junit into a file's folder": (
        ["scan", "{const_model}", "--data", "{const_data}", "--junit", "{d}/afile.txt/j.xml"],
        "is a file, not a folder",
    ),
    "--markdown is a folder": (["scan", "{const_model}", "--data", "{const_data}", "--markdown", "{d}"], "is a folder"),
    "bad --bounds": (["scan", "{const_model}", "--data", "{const_data}", "--bounds", "1,0"], "--bounds"),
    "bad --input-shape": (["scan", "{const_model}", "--data", "{const_data}", "--input-shape", "a,b"], "--input-shape"),
    "unknown probe": (["scan", "{const_model}", "--data", "{const_data}", "--probes", "telepathy"], "unknown probe"),
}


@pytest.fixture
def bad_files(cases):
    d = cases["dir"]
    bad = line_data(50)
    bad[4, 0] = np.nan
    np.save(d / "nan.npy", bad)
    (d / "empty.csv").write_text("")
    (d / "words.csv").write_text("a,b\n1,2\nthree,4\n")
    np.save(d / "trunc.npy", line_data(50))
    (d / "trunc.npy").write_bytes((d / "trunc.npy").read_bytes()[:150])
    np.save(d / "wide.npy", np.zeros((50, 3), np.float32))
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), str(d / "widen.pt"))
    np.save(d / "complex.npy", line_data(50).astype(np.complex64))
    np.save(d / "same.npy", np.ones((50, 2), np.float32))
    np.save(d / "huge.npy", line_data(50).astype(np.float64) * 1e300)
    torch.jit.save(torch.jit.script(_NaNOut()), str(d / "nanout.pt"))
    (d / "afile.txt").write_text("not a folder")
    return cases


class _NaNOut(torch.nn.Module):
    """Reconstructs nothing: NaN everywhere."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(2, 1)
        self.decoder = torch.nn.Linear(1, 2)

    def forward(self, x):
        return self.decoder(self.encoder(x)) * float("nan")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_no_output(bad_files, case):
    args, words = BAD_INPUTS[case]
    d = bad_files["dir"]
    fill = {
        "d": d,
        "proj_model": bad_files["proj"][0],
        "proj_data": bad_files["proj"][1],
        "const_model": bad_files["const"][0],
        "const_data": bad_files["const"][1],
    }
    out = d / "out"
    args = [a.format(**fill) for a in args]
    before = sorted(p.name for p in d.iterdir())
    result = invoke(args[0], *FAST, "--out", out, *args[1:], "--quiet")  # the case's flags come last and win
    assert result.exit_code == 2, result.output
    assert words in _one_line_error(result)
    assert not out.exists() and sorted(p.name for p in d.iterdir()) == before  # nothing written anywhere


class _CreatesFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_refused_pickle_exits_2_and_runs_nothing(cases):
    d = cases["dir"]
    marker, evil = d / "pwned", d / "evil.pt"
    torch.save({"state_dict": _CreatesFile(marker)}, evil)
    result = invoke("scan", evil, "--data", cases["proj"][1], "--arch", PROJECTION_ARCH, "--out", d / "out", *FAST)
    assert result.exit_code == 2
    assert "--trust-checkpoint" in _one_line_error(result)
    assert not marker.exists() and not (d / "out").exists()


def test_pickled_module_scans_with_trust(cases):
    d = cases["dir"]
    torch.save(projection_ae(), d / "full.pt")
    refused = invoke("scan", d / "full.pt", "--data", cases["proj"][1], "--out", d / "o", "--quiet", *FAST)
    assert refused.exit_code == 2 and not (d / "o").exists()
    trusted = invoke(
        "scan", d / "full.pt", "--data", cases["proj"][1], "--out", d / "o", "--quiet", "--trust-checkpoint", *FAST
    )
    assert trusted.exit_code == 1
    assert read_json(d / "o" / "report.json")["model"]["format"] == "pickled nn.Module"


# --------------------------------------------------------------------------- 3: internal errors
def test_internal_error_exits_3_with_one_line(cases, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr("aeaudit.audit.compute_baseline", broken)
    model, data = cases["const"]
    result = invoke("scan", model, "--data", data, "--out", cases["dir"] / "o", *FAST)
    assert result.exit_code == 3
    message = _one_line_error(result)
    assert "internal error: ZeroDivisionError: simulated bug" in message and "--debug" in message
    assert not (cases["dir"] / "o").exists()


# --------------------------------------------------------------------------- repeatability, budget, quiet
def test_same_seed_gives_the_same_report(cases):
    model, data = cases["proj"]
    out = cases["dir"] / "o"
    reports = []
    for _ in range(2):
        result = invoke(
            "scan", model, "--data", data, "--arch", PROJECTION_ARCH, "--out", out, "--seed", "7", "--quiet", *FAST
        )
        assert result.exit_code == 1
        reports.append(read_json(out / "report.json"))
    assert reports[0]["status"] == "complete" and reports[0]["seed"] == 7
    assert strip_timings(reports[0]) == strip_timings(reports[1])
    other = invoke(
        "scan", model, "--data", data, "--arch", PROJECTION_ARCH, "--out", out, "--seed", "8", "--quiet", *FAST
    )
    assert other.exit_code == 1
    assert read_json(out / "report.json")["findings"] != reports[0]["findings"]  # the seed is really used


def test_time_limit_is_a_hard_cap_and_keeps_what_was_found():
    """A search of 2²⁶ draws stops at the time limit; the scan is incomplete, and what it verified
    before the cap still fails the gate."""
    start = time.perf_counter()
    result = aeaudit.scan(
        projection_ae(),
        line_data(),
        time_limit=1.0,
        probes=("random",),
        scorers=(),
        device="cpu",
        quiet=True,
        probe_settings={"samples": 2**26},
    )
    elapsed = time.perf_counter() - start
    probe = result.probes[0]
    assert probe["status"] == "incomplete" and "time limit" in probe["reason"]
    assert result.status == "incomplete" and "time limit" in result.stopped
    assert probe["seconds"] < 1.0 + 2.0  # stops within a batch of the cap (slack for a loaded CI machine)
    assert probe["candidates"] <= 8192 and result.timings["probes"] < 1.0 + 4.0
    assert elapsed < 20.0
    assert result.exit_code() == 1  # what was found before the cap is verified, so it stands


@pytest.mark.slow
def test_same_findings_on_an_idle_and_a_busy_machine():
    """Issue 12, item 1: the amount of search is work, not seconds, so the same scan gives the same
    report beside a process that keeps a CPU busy (it did not when budgets were in seconds)."""
    kwargs = dict(
        probes=("grid", "pgd-latent", "pgd-input", "random"),
        scorers=(),
        device="cpu",
        quiet=True,
        effort="quick",
        seed=2,
    )
    idle = aeaudit.scan(projection_ae(), line_data(), **kwargs).to_dict()
    burner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 120: pass"])
    try:
        busy = aeaudit.scan(projection_ae(), line_data(), **kwargs).to_dict()
    finally:
        burner.kill()
        burner.wait()
    assert idle["status"] == busy["status"] == "complete" and idle["findings"]
    assert strip_timings(idle) == strip_timings(busy)


def _python_m(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}  # as conftest.py does in-process
    return subprocess.run(
        [sys.executable, "-m", "aeaudit", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_python_m_aeaudit_exit_codes_and_quiet(cases):
    d = cases["dir"]
    model, data = cases["proj"]
    found = _python_m(
        "scan", model, "--data", data, "--arch", PROJECTION_ARCH, "--out", d / "o", "--quiet", *FAST, cwd=d
    )
    assert found.returncode == 1, found.stderr
    assert found.stdout == ""
    report = json.loads((d / "o" / "report.json").read_text())
    assert report["command_line"].startswith("aeaudit scan") and "--quiet" in report["command_line"]

    refused = _python_m("scan", d / "missing.pt", "--data", data, "--out", d / "o2", cwd=d)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().count("\n") == 0 and "not found" in refused.stderr
    assert not (d / "o2").exists()


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"aeaudit {aeaudit.__version__}"


def test_probe_and_scorer_settings_reach_the_probes_and_typos_exit_2(cases):
    model, data = cases["proj"]
    result = invoke(
        "scan",
        model,
        "--arch",
        PROJECTION_ARCH,
        "--data",
        data,
        *FAST,
        "-o",
        "out",
        "--quiet",
        "--probe-settings",
        "samples=300,random.batch_size=100",
    )
    assert result.exit_code == 1, result.output
    report = read_json(cases["dir"] / "out" / "report.json")
    assert report["settings"]["probe_settings"] == {"samples": 300, "random": {"batch_size": 100}}
    assert report["probes"][0]["evaluations"] == 2 * 300  # samples per space: input and latent
    for flag, value, named in (
        ("--probe-settings", "pgd-input.stepz=5", "pgd-input.stepz"),
        ("--probe-settings", "stepz=5", "stepz"),
        ("--scorer-settings", "toll.betta=2", "toll.betta"),
        ("--probe-settings", "steps", "KEY=VALUE"),
    ):
        result = invoke("scan", model, "--arch", PROJECTION_ARCH, "--data", data, *FAST, "-o", "bad", flag, value)
        assert result.exit_code == 2 and named in _one_line_error(result), (value, result.output)
    assert not (cases["dir"] / "bad").exists()


def test_parse_settings_types_and_nesting():
    assert parse_settings("steps=400, pgd-input.starts=128,toll.beta=1e1,x=true,optimizer=sign", "--s") == {
        "steps": 400,
        "pgd-input": {"starts": 128},
        "toll": {"beta": 10.0},
        "x": True,
        "optimizer": "sign",
    }
    assert parse_settings("", "--s") == {}
    probe = make_probe("random", {"samples": 3, "steps": 9, "random": {"batch_size": 7}, "pgd-input": {"samples": 5}})
    assert (probe.samples, probe.batch_size) == (3, 7)  # flat keys it takes, its own win, others' ignored


def _wait_for_handler(proc: subprocess.Popen, signum: int, timeout: float = 120) -> None:
    """Wait until ``proc`` has installed a handler for ``signum`` (Linux: the SigCgt mask)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = open(f"/proc/{proc.pid}/status").read()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt")), 16)
        if caught >> (signum - 1) & 1:
            return
        time.sleep(0.05)
    raise AssertionError("the scan never installed its signal handler")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see the handler installed")
def test_sigterm_writes_the_incomplete_report_and_exits_inconclusive(cases):
    """What CI runners and `timeout` send: the scan stops, writes its report atomically and exits 4
    (nothing at or above the gate was found before the signal); a second signal aborts at once."""
    d = cases["dir"]
    model, data = cases["const"]
    args = [
        "scan",
        model,
        "--data",
        data,
        "--probes",
        "random",
        "--scorers",
        "",
        "--device",
        "cpu",
        "--quiet",
        "--probe-settings",
        f"samples={2**30}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aeaudit", *map(str, args), "-o", d / "o"],
        cwd=d,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_handler(proc, signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    report = read_json(d / "o" / "report.json")
    assert report["status"] == "incomplete" and report["outcome"] == "INCONCLUSIVE"
    assert "SIGTERM" in report["stopped"] and report["verdict"].startswith("INCONCLUSIVE")
    assert report["gate"]["exit_code"] == 4 and not list((d / "o").glob(".*.tmp"))


def test_a_second_signal_aborts_at_once(monkeypatch):
    from aeaudit.effort import INTERRUPTS, Stop

    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    with INTERRUPTS.armed():
        INTERRUPTS._handle(signal.SIGINT, None)
        assert Stop().reason() == "interrupted (SIGINT)" and exits == []  # the first asks the work to stop
        INTERRUPTS._handle(signal.SIGINT, None)
    assert exits == [128 + signal.SIGINT]
    assert Stop().reason() is None  # disarmed: a later scan starts clean once re-armed


def test_inconclusive_maps_to_pass_or_fail_on_request(cases):
    model, data = cases["const"]
    base = [
        "scan",
        model,
        "--data",
        data,
        "--probes",
        "random",
        "--scorers",
        "",
        "--device",
        "cpu",
        "--quiet",
        "--probe-settings",
        f"samples={2**26}",
        "--time-limit",
        "0.5",
    ]
    codes = {
        how: invoke(*base, "-o", cases["dir"] / how, "--inconclusive", how).exit_code
        for how in ("inconclusive", "pass", "fail")
    }
    assert codes == {"inconclusive": 4, "pass": 0, "fail": 1}
    report = read_json(cases["dir"] / "pass" / "report.json")
    assert report["outcome"] == "INCONCLUSIVE" and report["gate"]["inconclusive_as"] == "pass"


def test_ctrl_c_keeps_what_was_found_and_marks_the_scan_incomplete(cases, monkeypatch):
    """Ctrl-C during the second probe: the first probe's verified findings are reported, the scan
    says incomplete, and the CLI still writes report.json and gates on what was found."""
    from aeaudit.probes.random_search import RandomSearch

    def interrupted(self, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(RandomSearch, "_run", interrupted)
    model, data = cases["proj"]
    result = invoke(
        "scan",
        model,
        "--arch",
        PROJECTION_ARCH,
        "--data",
        data,
        "--probes",
        "affine,random",
        "--scorers",
        "",
        "--device",
        "cpu",
        "--quiet",
        "-o",
        "out",
    )
    assert result.exit_code == 1, result.output
    report = read_json(cases["dir"] / "out" / "report.json")
    assert report["status"] == "incomplete" and report["outcome"] == "FAIL"
    assert [(p["probe"], p["status"]) for p in report["probes"]] == [("affine", "complete"), ("random", "incomplete")]
    assert "interrupted" in report["probes"][1]["reason"]
    assert report["findings"] and all(f["probe"] == "affine" and f["verified"] for f in report["findings"])


def test_importing_the_cli_does_not_load_torch():
    """`aeaudit --help` and `--version` answer at once: torch loads only when a command runs."""
    code = "import sys, aeaudit, aeaudit.cli; print(aeaudit.__version__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == [aeaudit.__version__, "False"], out.stderr
