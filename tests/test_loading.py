"""Model loading: every checkpoint format, the encoder/decoder split, and the pickle guard."""

from __future__ import annotations

import pickle
import sys

import helpers
import numpy as np
import pytest
import torch
from helpers import gaussian_data, line_data, projection_ae, trained_toy
from torch import nn

from aeaudit import InputError, UntrustedCheckpointError, load_model
from aeaudit.model.shapes import conv_input_shape
from aeaudit.zoo import ConvAutoencoder, MLPAutoencoder

HELPERS_FILE = helpers.__file__
X = torch.as_tensor(gaussian_data(16, seed=3))


def _loaded(path, sample=X, **options):
    return load_model(path, sample, device="cpu", **options)


def _assert_same_map(adapter, model: nn.Module, x=X):
    with torch.no_grad():
        torch.testing.assert_close(adapter.reconstruct(x), model(x), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- the hand-checkable model
def test_projection_loss_is_half_the_squared_second_coordinate():
    adapter = load_model(projection_ae(), device="cpu")
    x = torch.tensor([[5.0, 0.0], [0.3, 0.2], [-1.0, -2.0]])
    torch.testing.assert_close(adapter.losses(x), torch.tensor([0.0, 0.02, 2.0]))
    torch.testing.assert_close(adapter.reconstruct(x), torch.tensor([[5.0, 0.0], [0.3, 0.0], [-1.0, 0.0]]))


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript(tmp_path, how):
    model = trained_toy()
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, X[:2])
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, str(path))
    adapter = _loaded(path)
    assert adapter.card.format == "torchscript"
    assert adapter.input_shape == (2,)  # read from the first Linear of the archive
    assert adapter.has_latent and adapter.latent_shape == (1,)
    assert adapter.card.layers == {"Linear": 4, "ReLU": 2}
    _assert_same_map(adapter, model)


@pytest.mark.parametrize("dynamic", [True, False])
def test_torch_export(tmp_path, dynamic):
    model = trained_toy()
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    program = torch.export.export(model, (X[:4],), dynamic_shapes=shapes)
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    adapter = _loaded(path)
    assert adapter.card.format == "torch.export"
    assert adapter.input_shape == (2,)
    assert not adapter.has_latent and "forward()" in adapter.split_reason
    assert adapter.card.inventory_source == "graph" and adapter.card.piecewise_linear
    _assert_same_map(adapter, model, X[:7])  # 7: not a multiple of a fixed export batch of 4
    assert any("fixed batch size of 4" in n for n in adapter.card.notes) is (not dynamic)
    exact = adapter.to("cpu", torch.float64)  # what the verifier does
    assert exact.losses(X.double()).dtype == torch.float64


@pytest.mark.parametrize("wrap", [None, "state_dict", "model_state_dict", "model", "net"])
def test_state_dict_layouts(tmp_path, wrap):
    model = trained_toy()
    state = model.state_dict()
    obj = state if wrap is None else {wrap: state, "epoch": 7, "optimizer": {"lr": 0.01}}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    adapter = _loaded(path, arch="mlp:2,5,1,5,2")
    assert adapter.card.format == "state_dict"
    assert adapter.card.n_parameters == sum(p.numel() for p in model.parameters())
    if wrap is not None:
        assert adapter.checkpoint_extras["epoch"] == 7
    _assert_same_map(adapter, model)


def test_state_dict_needs_arch_and_matching_weights(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(trained_toy().state_dict(), path)
    with pytest.raises(InputError, match="--arch"):
        load_model(path, device="cpu")
    with pytest.raises(InputError, match="do not fit --arch mlp:2,4,1,4,2"):
        load_model(path, device="cpu", arch="mlp:2,4,1,4,2")
    with pytest.raises(InputError, match="no state_dict"):
        torch.save({"something": {"nested": 1}}, path)
        load_model(path, device="cpu", arch="mlp:2,5,1,5,2")


def test_mlp_spec_activations(tmp_path):
    model = MLPAutoencoder([2, 4, 1, 4, 2], activation="sigmoid", output_activation="tanh")
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    adapter = _loaded(path, arch="mlp:2,4,1,4,2", activation="sigmoid", output_activation="tanh")
    assert adapter.card.activations == ["Sigmoid", "Tanh"] and not adapter.card.piecewise_linear
    _assert_same_map(adapter, model)
    with pytest.raises(InputError, match="mlp:2,5,1,5,2"):
        load_model(path, device="cpu", arch="mlp:2,x,2")


def test_arch_from_file_and_from_package(tmp_path, monkeypatch):
    net = helpers.EncDecNet()
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    from_file = _loaded(path, arch=f"{HELPERS_FILE}:encdec")
    _assert_same_map(from_file, net)
    assert (from_file.card.encoder, from_file.card.decoder) == ("enc", "dec")

    pkg = tmp_path / "aeaudit_test_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "from torch import nn\n\n\ndef build():\n    return nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "aeaudit_test_pkg", raising=False)
    monkeypatch.delitem(sys.modules, "aeaudit_test_pkg.nets", raising=False)
    seq = nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 2))
    torch.save(seq.state_dict(), path)
    from_pkg = _loaded(path, arch="aeaudit_test_pkg.nets:build")
    _assert_same_map(from_pkg, seq)
    assert not from_pkg.has_latent  # a bare Sequential names no halves


def test_arch_errors_are_input_errors(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(helpers.EncDecNet().state_dict(), path)
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom at import')\n")
    cases = {
        f"{bad}:build": "boom at import",
        f"{HELPERS_FILE}:no_such_factory": "no callable 'no_such_factory'",
        f"{tmp_path / 'missing.py'}:build": "not found",
        "no_such_package_xyz.mod:build": "cannot import",
        "just-a-name": "expected mlp:SIZES",
        f"{HELPERS_FILE}:line_data": "not a torch.nn.Module",
    }
    for spec, message in cases.items():
        with pytest.raises(InputError, match=message):
            load_model(path, device="cpu", arch=spec)


# --------------------------------------------------------------------------- the pickle guard
def test_pickled_module_needs_trust(tmp_path):
    model = trained_toy()
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(UntrustedCheckpointError) as err:
        load_model(path, device="cpu")
    message = str(err.value)
    assert "\n" not in message and "--trust-checkpoint" in message and "arbitrary code" in message
    adapter = _loaded(path, trust_checkpoint=True)
    assert adapter.card.format == "pickled nn.Module"
    _assert_same_map(adapter, model)


def test_trusted_checkpoint_dict_holding_a_module(tmp_path):
    model = trained_toy()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model, "epoch": np.int64(3)}, path)
    with pytest.raises(UntrustedCheckpointError):
        load_model(path, device="cpu")
    adapter = _loaded(path, trust_checkpoint=True)
    assert adapter.card.format == "pickled nn.Module" and "epoch" in adapter.checkpoint_extras
    _assert_same_map(adapter, model)


class _CreatesFile:
    """Unpickling this object creates (opens for writing) the file at ``target``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_crafted_pickle_is_never_unpickled(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": _CreatesFile(marker)}
    if container == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(UntrustedCheckpointError):
        load_model(path, device="cpu", arch="mlp:2,5,1,5,2")
    assert not marker.exists()


def test_unreadable_model_files(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 4)
    truncated = tmp_path / "truncated.pt"
    torch.save(trained_toy().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    for path, message in [(empty, "is empty"), (garbage, "not a checkpoint"), (tmp_path / "nope.pt", "not found")]:
        with pytest.raises(InputError, match=message):
            load_model(path, device="cpu", arch="mlp:2,5,1,5,2")
    with pytest.raises(InputError) as err:
        load_model(truncated, device="cpu", arch="mlp:2,5,1,5,2")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- PyOD
def _standardised_distance(det, x: np.ndarray, recon) -> np.ndarray:
    xs = (x - det.X_mean) / (det.X_std + 1e-8)
    return np.sqrt(((xs - recon) ** 2).sum(axis=1))


@pytest.fixture(scope="module")
def pyod_data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(240, 4)) * [1, 2, 3, 4] + [0, 1, 2, 3]).astype(np.float32)


def test_pyod_autoencoder_scores_like_pyod(tmp_path, pyod_data):
    pytest.importorskip("pyod")
    joblib = pytest.importorskip("joblib")
    from pyod.models.auto_encoder import AutoEncoder

    det = AutoEncoder(epoch_num=2, batch_size=64, hidden_neuron_list=[8, 2], verbose=0, random_state=0)
    det.fit(pyod_data)
    path = tmp_path / "ae.joblib"
    joblib.dump(det, path)
    with pytest.raises(UntrustedCheckpointError):
        load_model(path, device="cpu")
    adapter = _loaded(path, sample=torch.as_tensor(pyod_data[:4]), trust_checkpoint=True)
    assert adapter.card.format == "pyod.AutoEncoder" and adapter.loss_kind == "pyod"
    assert "mean/std" in adapter.card.preprocessing
    assert adapter.has_latent and adapter.latent_shape == (2,)
    ours = adapter.losses(torch.as_tensor(pyod_data)).numpy()
    np.testing.assert_allclose(ours, det.decision_function(pyod_data), rtol=1e-5, atol=1e-5)
    # reconstruct() answers in the user's (unstandardised) space
    rec = adapter.reconstruct(torch.as_tensor(pyod_data[:5])).numpy()
    rec_model_space = (rec - det.X_mean) / (det.X_std + 1e-8)
    np.testing.assert_allclose(_standardised_distance(det, pyod_data[:5], rec_model_space), ours[:5], rtol=1e-4)


def test_pyod_vae_is_scored_at_the_mean_code(tmp_path, pyod_data):
    pytest.importorskip("pyod")
    joblib = pytest.importorskip("joblib")
    from pyod.models.vae import VAE

    det = VAE(
        epoch_num=2,
        batch_size=64,
        encoder_neuron_list=[8],
        decoder_neuron_list=[8],
        latent_dim=2,
        verbose=0,
        random_state=0,
    )
    det.fit(pyod_data)
    with torch.no_grad():  # a vanishing variance makes PyOD's sampled score equal the mean-code score
        det.model.encoder_logvar.weight.zero_()
        det.model.encoder_logvar.bias.fill_(-30.0)
    path = tmp_path / "vae.joblib"
    joblib.dump(det, path)
    adapter = _loaded(path, sample=torch.as_tensor(pyod_data[:4]), trust_checkpoint=True)
    assert adapter.card.format == "pyod.VAE" and adapter.latent_shape == (2,)
    assert any("mean code" in n for n in adapter.card.notes)
    ours = adapter.losses(torch.as_tensor(pyod_data)).numpy()
    np.testing.assert_allclose(ours, det.decision_function(pyod_data), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- the encoder/decoder split
@pytest.mark.parametrize(
    "make, split",
    [
        (helpers.EncDecNet, ("enc", "dec")),
        (helpers.MethodNet, ("encode", "decode")),
        (trained_toy, ("encoder", "decoder")),
    ],
)
def test_split_found_by_name(make, split):
    model = make().eval()
    adapter = _loaded(model)
    assert adapter.has_latent and adapter.latent_shape == (1,)
    assert (adapter.card.encoder, adapter.card.decoder) == split
    with torch.no_grad():
        torch.testing.assert_close(adapter.decode(adapter.encode(X)), model(X))


def test_split_named_on_the_command_line():
    net = helpers.OddNamesNet()
    assert not _loaded(net).has_latent
    adapter = _loaded(net, encoder="down", decoder="up")
    assert adapter.has_latent and adapter.latent_shape == (1,)
    with pytest.raises(InputError, match="'sideways'"):
        load_model(net, device="cpu", encoder="down", decoder="sideways")
    with pytest.raises(InputError, match="both --encoder and --decoder"):
        load_model(net, device="cpu", encoder="down")


def test_model_without_split_skips_latent_checks_with_a_reason():
    adapter = _loaded(helpers.NoSplitNet())
    assert not adapter.has_latent
    assert "--encoder/--decoder" in adapter.split_reason
    assert any(n.startswith("latent checks skipped") for n in adapter.card.notes)


def test_output_shape_must_equal_input_shape():
    with pytest.raises(InputError, match=r"output shape \(3,\) differs from its input shape \(2,\)"):
        load_model(helpers.WidenNet(), X, device="cpu")


def test_sampling_vae_gets_the_mean_path_and_noise_is_refused():
    torch.manual_seed(0)
    vae = helpers.TinyVAE().eval()
    adapter = _loaded(vae)
    assert adapter.has_latent and adapter.card.encoder == "encode"
    expected = vae.decode(vae.encode(X)[0])
    with torch.no_grad():
        torch.testing.assert_close(adapter.reconstruct(X), expected)
        torch.testing.assert_close(adapter.losses(X), adapter.losses(X))  # repeatable
    with pytest.raises(InputError, match="forward is random"):
        _loaded(helpers.NoisyNet())


def test_conv_input_shape_from_flat_samples():
    conv = ConvAutoencoder(latent_dim=2)
    assert conv_input_shape(conv, (784,)) == (1, 28, 28)
    assert conv_input_shape(conv, (28, 28)) == (1, 28, 28)
    assert conv_input_shape(conv, (1, 28, 28)) is None  # already has its channel axis
    assert conv_input_shape(conv, (700,)) is None  # not a square image
    assert conv_input_shape(projection_ae(), (2,)) is None
    scripted = torch.jit.script(conv.eval())
    assert conv_input_shape(scripted, (784,)) == (1, 28, 28)


def test_device_spec_errors():
    with pytest.raises(InputError, match="--device"):
        load_model(projection_ae(), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            load_model(projection_ae(), device="cuda")


def test_line_data_has_the_projection_blind_spot():
    """Sanity of the shared fixture: on-axis points far beyond the data reconstruct exactly."""
    data = line_data(200)
    assert np.abs(data[:, 0]).max() < 3.0
    adapter = load_model(projection_ae(), device="cpu")
    assert float(adapter.losses(torch.tensor([[30.0, 0.0]]))[0]) == 0.0
