"""The formats users deploy: flatten-in-forward MLPs, safetensors, ONNX and PyOD's own saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import gaussian_data, trained_toy

import aeaudit
from aeaudit import InputError, UntrustedCheckpointError, load_model

FLAT_FILE = Path(__file__).parent / "models" / "flat_mnist.py"
LATENT_PROBES = ("grid", "pgd-latent")


def _flat_model():
    import importlib.util

    spec = importlib.util.spec_from_file_location("flat_mnist_for_tests", FLAT_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.FlatMnistAE().eval()


@pytest.fixture(scope="module")
def mnist_like():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(48, 1, 28, 28)).astype(np.float32)


def _scan(path, data, **options):
    return aeaudit.scan(
        path, data, probes=("random", *LATENT_PROBES), scorers=(), effort="quick", device="cpu", seed=0, **options
    )


@pytest.mark.parametrize("saved_as", ["state_dict", "torchscript"])
@pytest.mark.parametrize("declared", [None, (1, 28, 28)])
def test_flatten_in_forward_keeps_the_data_layout_and_runs_the_latent_probes(tmp_path, mnist_like, saved_as, declared):
    model = _flat_model()
    path = tmp_path / "flat.pt"
    options = {"input_shape": declared}
    if saved_as == "state_dict":
        torch.save(model.state_dict(), path)
        options["arch"] = f"{FLAT_FILE}:FlatMnistAE"
    else:
        torch.jit.save(torch.jit.script(model), str(path))
    result = _scan(path, mnist_like, **options)
    report = result.to_dict()
    assert report["model"]["input_shape"] == [1, 28, 28]
    assert report["model"]["latent_shape"] == [3], report["model"]["notes"]
    ran = {p["probe"]: p["status"] for p in report["probes"]}
    assert all(ran[name] in ("complete", "incomplete") for name in LATENT_PROBES), ran
    assert any("flattened to (784,)" in n for n in report["model"]["notes"])


def test_flatten_adapter_matches_the_model_and_its_halves(mnist_like):
    model = _flat_model()
    x = torch.as_tensor(mnist_like[:5])
    adapter = load_model(model, x, device="cpu")
    assert adapter.input_shape == (1, 28, 28)  # the data's shape, not the first layer's 784
    with torch.no_grad():
        torch.testing.assert_close(adapter.reconstruct(x), model(x))
        z = adapter.encode(x)
        assert z.shape == (5, 3)
        torch.testing.assert_close(adapter.decode(z), model(x))
    exact = adapter.to("cpu", torch.float64)  # the verifier's copy keeps the layout
    assert exact.decode(exact.encode(x.double())).shape == (5, 1, 28, 28)


def test_flat_data_for_a_flat_model_still_works(tmp_path):
    """Rows of 784 values for the same model: the data's shape (784,) is accepted as it is."""
    model = _flat_model()
    x = torch.rand(4, 784)
    adapter = load_model(model, x, device="cpu")
    assert adapter.input_shape == (784,)
    assert adapter.has_latent and adapter.latent_shape == (3,)
    torch.testing.assert_close(adapter.reconstruct(x), model(x).reshape(4, 784))


# --------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip_with_arch(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = trained_toy()
    path = tmp_path / "weights.bin"  # any name: told by content
    safetensors_torch.save_file(model.state_dict(), str(path))
    adapter = load_model(path, torch.zeros(2, 2), device="cpu", arch="mlp:2,5,1,5,2")
    assert adapter.card.format == "safetensors" and adapter.has_latent
    x = torch.as_tensor(gaussian_data(8, seed=2))
    with torch.no_grad():
        torch.testing.assert_close(adapter.reconstruct(x), model(x))
    with pytest.raises(InputError, match="--arch"):
        load_model(path, device="cpu")


def test_damaged_safetensors_is_one_line(tmp_path):
    pytest.importorskip("safetensors")
    path = tmp_path / "bad.safetensors"
    path.write_bytes((40).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [2]' + b" " * 40)
    with pytest.raises(InputError) as err:
        load_model(path, device="cpu", arch="mlp:2,5,1,5,2")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- PyOD's own saving
def test_pyod_persistence_envelope_loads_only_with_trust(tmp_path):
    pytest.importorskip("pyod")
    from pyod.models.auto_encoder import AutoEncoder
    from pyod.utils import persistence

    rng = np.random.default_rng(0)
    data = rng.normal(size=(120, 4)).astype(np.float32)
    det = AutoEncoder(epoch_num=1, batch_size=64, hidden_neuron_list=[8, 2], verbose=0, random_state=0)
    det.fit(data)
    path = tmp_path / "detector.pyod"
    persistence.save(det, path, metadata={"run": 1})
    with pytest.raises(UntrustedCheckpointError):
        load_model(path, device="cpu")
    adapter = load_model(path, data[:4], device="cpu", trust_checkpoint=True)
    assert adapter.card.format == "pyod.AutoEncoder" and adapter.loss_kind == "pyod"
    np.testing.assert_allclose(
        adapter.losses(torch.as_tensor(data)).numpy(), det.decision_function(data), rtol=1e-5, atol=1e-5
    )


# --------------------------------------------------------------------------- ONNX
def _onnx_export(model, x, path, dynamic=True, dynamo=False):
    """Export with the legacy TorchScript-based exporter or with torch's default (dynamo, needs onnxscript)."""
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    import warnings

    shapes = {"dynamic_shapes": {"x": {0: torch.export.Dim("n")}}} if dynamo else {}
    axes = {"dynamic_axes": {"x": {0: "n"}, "y": {0: "n"}}} if dynamic and not dynamo else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter warns that it is legacy
        torch.onnx.export(
            model.eval(), (x,), str(path), dynamo=dynamo, input_names=["x"], output_names=["y"], **shapes, **axes
        )
    return path


ONNX_MODELS = {
    "mlp": (lambda: trained_toy(), (2,)),
    "conv": (
        lambda: __import__("aeaudit.zoo", fromlist=["ConvAutoencoder"]).ConvAutoencoder(latent_dim=2),
        (1, 28, 28),
    ),
}


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy-exporter", "dynamo-exporter"])
@pytest.mark.parametrize("name", sorted(ONNX_MODELS))
def test_onnx_converts_to_torch_and_matches_the_model(tmp_path, name, dynamo):
    make, shape = ONNX_MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(5, *shape)
    path = _onnx_export(model, x[:2], tmp_path / "model.bin", dynamo=dynamo)  # any name: told by content
    adapter = load_model(path, x, device="cpu")
    assert adapter.card.format == "onnx" and adapter.card.differentiable
    assert adapter.input_shape == shape
    with torch.no_grad():
        torch.testing.assert_close(adapter.reconstruct(x), model(x), rtol=1e-4, atol=1e-5)
    xg = x.clone().requires_grad_(True)  # gradients flow: the PGD probes can run
    adapter.loss(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    exact = adapter.to("cpu", torch.float64)
    assert exact.losses(x.double()).dtype == torch.float64


def test_onnx_scan_runs_gradient_probes(tmp_path):
    model = trained_toy()
    path = _onnx_export(model, torch.zeros(2, 2), tmp_path / "model.onnx")
    report = aeaudit.scan(
        path,
        gaussian_data(64, seed=1),
        probes=("random", "pgd-input"),
        scorers=(),
        effort="quick",
        device="cpu",
        seed=0,
    ).to_dict()
    status = {p["probe"]: p["status"] for p in report["probes"]}
    assert status["pgd-input"] == "complete" and status["random"] == "complete", report["probes"]
    assert report["model"]["format"] == "onnx"


class _WithSine(torch.nn.Module):
    """ONNX ``Sin`` is not in the converted subset: the graph runs on onnxruntime."""

    def __init__(self):
        super().__init__()
        self.net = trained_toy()

    def forward(self, x):
        return self.net(x) + 0.01 * torch.sin(x)


def test_unconvertible_onnx_runs_on_onnxruntime_without_gradients(tmp_path):
    pytest.importorskip("onnxruntime")
    model = _WithSine().eval()
    path = _onnx_export(model, torch.zeros(2, 2), tmp_path / "model.onnx")
    x = torch.as_tensor(gaussian_data(6, seed=4))
    adapter = load_model(path, x, device="cpu")
    assert not adapter.card.differentiable
    assert any("onnxruntime" in n and "Sin" in n for n in adapter.card.notes), adapter.card.notes
    with torch.no_grad():
        torch.testing.assert_close(adapter.reconstruct(x), model(x), rtol=1e-5, atol=1e-6)
    exact = adapter.to("cpu", torch.float64)  # the verifier's copy opens its own session
    assert exact.losses(x.double()).shape == (6,)
    report = aeaudit.scan(
        path,
        gaussian_data(64, seed=1),
        probes=("random", "pgd-input", "far-field"),
        scorers=("recon", "gradcon", "energy"),
        effort="quick",
        device="cpu",
        seed=0,
    ).to_dict()
    status = {p["probe"]: (p["status"], p["reason"]) for p in report["probes"]}
    assert status["random"][0] == "complete"
    for probe in ("pgd-input", "far-field"):  # gradient probes say they did not run, and why
        assert status[probe][0] == "skipped" and "gradients" in status[probe][1], status
    rows = {r["scorer"]: r["verdict"] for r in report["scorers"]["table"]}
    assert "gradients" in rows["gradcon"] and "gradients" in rows["energy"], rows


def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    path = _onnx_export(trained_toy(), torch.zeros(2, 2), tmp_path / "model.onnx")
    model = onnx.load(str(path))
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 64)
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    inner = tmp_path / "models"
    inner.mkdir()
    onnx.save(model, str(inner / "model.onnx"))
    with pytest.raises(InputError, match="outside the model's folder") as err:
        load_model(inner / "model.onnx", device="cpu")
    assert "\n" not in str(err.value)
