"""No code in a checkpoint runs without --trust-checkpoint: crafted files for every path torch would take.

Each crafted file creates a marker file when torch loads or runs it (``crafted.py``); the tests show that
it does under plain torch, and that aeaudit refuses it (exit 2, one line, no marker, nothing written).
"""

from __future__ import annotations

import crafted
import helpers
import numpy as np
import pytest
import torch
from helpers import gaussian_data, trained_toy
from typer.testing import CliRunner

from aeaudit import InputError, UntrustedCheckpointError, load_model
from aeaudit.cli import app
from aeaudit.model.archive import safe_guard, safe_sympy_expression
from aeaudit.model.graph_guard import check_exported_program, check_script_module, safe_ops
from aeaudit.zoo import ConvAutoencoder, GradConCAE, MLPAutoencoder

REFUSAL_WORDS = {  # each attack is stopped by its own check, not by a neighbour's
    "pickled-weight": "weight",
    "pickled-constant": "use_pickle",
    "opaque-constant": "opaque_obj_0",
    "sample-inputs": "sample inputs",
    "shape-expression": "shape expression",
    "guards-code": "input guard",
    "aotinductor": "compiled code",
    "bad-operator": "torch.save",
    "legacy-export": "torch < 2.8",
    "forward-writes": "aten::from_file",
    "setstate-writes": "__setstate__",
    "duplicate-member": "two members",
    "reader-mismatch": "list different members",
    "traversal-member": "outside the archive",
}
LIVE_ON_PLAIN_TORCH = [*crafted.PT2_ATTACKS, "forward-writes", "setstate-writes"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "normal.npy"
    np.save(data, gaussian_data(64, seed=1))
    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.script(trained_toy()), str(good))
    return tmp_path, data, good


def _craft(name, folder):
    marker = folder / f"marker-{name}"
    return crafted.REFUSED_ATTACKS[name](folder, marker), marker


def _run_plain_torch(path):
    if path.suffix == ".pt2":
        torch.export.load(str(path)).module()(crafted.X4)
    else:
        torch.jit.load(str(path))(crafted.X4)


@pytest.mark.parametrize("name", LIVE_ON_PLAIN_TORCH)
def test_the_crafted_files_do_run_code_under_plain_torch(tmp_path, name):
    """The payloads are live: torch's own loaders run them (so the refusals below are real)."""
    path, marker = _craft(name, tmp_path)
    try:
        _run_plain_torch(path)
    except Exception:
        pass  # several payloads break the load after they ran
    assert marker.exists()


@pytest.mark.parametrize("name", sorted(crafted.REFUSED_ATTACKS))
def test_load_model_refuses_without_running_anything(tmp_path, name):
    path, marker = _craft(name, tmp_path)
    with pytest.raises(InputError) as err:
        load_model(path, device="cpu")
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()
    if name in REFUSAL_WORDS:
        assert REFUSAL_WORDS[name] in str(err.value)


@pytest.mark.parametrize("name", sorted(crafted.REFUSED_ATTACKS))
def test_scan_and_compare_exit_2_with_one_line_and_write_nothing(workdir, name):
    folder, data, good = workdir
    path, marker = _craft(name, folder)
    renamed = folder / "model.bin"  # the format is told by content, not by the name
    renamed.write_bytes(path.read_bytes())
    runs = [
        ["scan", path, "--data", data, "--out", folder / "out-scan"],
        ["scan", renamed, "--data", data, "--out", folder / "out-renamed"],
        ["compare", path, good, "--data", data, "--out", folder / "out-cmp1"],
        ["compare", good, path, "--data", data, "--out", folder / "out-cmp2"],
    ]
    for args in runs:
        result = CliRunner().invoke(app, [str(a) for a in [*args, "--effort", "quick", "--device", "cpu"]])
        assert result.exit_code == 2, (args, result.output)
        text = result.stderr.strip()
        assert text.startswith("aeaudit: error:") and "\n" not in text, text
        assert not marker.exists(), args
        assert not (args[-1]).exists()


def test_pickled_torchscript_constants_are_refused_by_torchs_restricted_unpickler(tmp_path):
    path = crafted.script_pickled_constants(tmp_path, tmp_path / "marker")
    with pytest.raises(InputError, match="not a readable TorchScript archive"):
        load_model(path, device="cpu")
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("name", ["forward-writes", "setstate-writes", "sample-inputs"])
def test_trust_checkpoint_still_loads_what_it_trusts(tmp_path, name):
    """--trust-checkpoint is the user's word: the guard steps aside (and logs what runs)."""
    path, marker = _craft(name, tmp_path)
    x = torch.zeros(2, 2)
    if name == "sample-inputs":  # torch's fallback runs the payload; the broken inputs then fail the load
        with pytest.raises(InputError):
            load_model(path, x, device="cpu", trust_checkpoint=True)
    else:
        load_model(path, x, device="cpu", trust_checkpoint=True)
    if name != "forward-writes":
        assert marker.exists()


# --------------------------------------------------------------------------- the allowlist on real models
EXAMPLE_MODELS = {
    "mlp-relu": lambda: MLPAutoencoder([2, 5, 1, 5, 2]),
    "mlp-sigmoid": lambda: MLPAutoencoder([2, 100, 20, 1, 20, 100, 2], activation="sigmoid"),
    "linear": lambda: MLPAutoencoder([8, 2, 8], activation="identity"),
    "mnist-conv": lambda: ConvAutoencoder(latent_dim=2),
    "gradcon-cae": GradConCAE,
    "encdec": helpers.EncDecNet,
    "methods": helpers.MethodNet,
    "vae": helpers.TinyVAE,
    "noisy": helpers.NoisyNet,
    "odd-names": helpers.OddNamesNet,
}


def _example_input(name):
    if name in ("mnist-conv", "gradcon-cae"):
        return torch.rand(2, 1, 28, 28)
    return torch.rand(2, 8 if name == "linear" else 2)


@pytest.mark.parametrize("name", sorted(EXAMPLE_MODELS))
def test_allowlist_accepts_every_example_model(name):
    model = EXAMPLE_MODELS[name]().eval()
    x = _example_input(name)
    check_script_module(torch.jit.script(model), name, trust=False)
    check_script_module(torch.jit.trace(model, x, check_trace=False), name, trust=False)
    if name != "noisy":  # torch.export refuses nothing here, but a sampling forward has no single graph to test
        check_exported_program(torch.export.export(model, (x,)), name, trust=False)


def test_allowlist_refuses_file_io_naming_operator_and_method(tmp_path):
    scripted = torch.jit.script(crafted.FileWritingForward(str(tmp_path / "never")))
    with pytest.raises(UntrustedCheckpointError, match=r"aten::from_file in forward\(\)"):
        check_script_module(scripted, "m.pt", trust=False)
    assert "aten::from_file" not in safe_ops() and "aten::save" not in safe_ops()
    assert not (tmp_path / "never").exists()


class _Prints(torch.nn.Module):
    def forward(self, x):
        print("side effect")
        return x


class _Nested(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Prints()

    def forward(self, x):
        if x.sum() > 0:
            return self.inner(x)
        return x


def test_allowlist_walks_submodules_and_blocks():
    with pytest.raises(UntrustedCheckpointError, match=r"prim::Print in (inner\.)?forward\(\)"):
        check_script_module(torch.jit.script(_Nested()), "nested.pt", trust=False)


def test_shape_expression_and_guard_grammar():
    assert safe_sympy_expression("Symbol('s31', positive=True, integer=True)")
    assert safe_sympy_expression("Max(1, 2*s0 + FloorDiv(s1, 2))")
    assert not safe_sympy_expression("__import__('os').system('x')")
    assert not safe_sympy_expression("Symbol('s', positive=().__class__)")
    assert not safe_sympy_expression("preview(s0)")
    assert safe_guard("L['x'].size()[0] >= 2")
    assert not safe_guard("L['x'].__class__")
    assert not safe_guard("open('f', 'w')")
