"""Branch and bound (aeaudit.bounds.bab): soundness of certified boxes, falsification of blind rays."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from helpers import gaussian_data, projection_ae, trained_toy
from torch import nn

from aeaudit.bounds.bab import certify_input, certify_latent, input_region
from aeaudit.bounds.network import input_network, latent_network
from aeaudit.bounds.ops import DTYPE
from aeaudit.zoo import MLPAutoencoder


def thresholds(loss_fn, ref: torch.Tensor) -> tuple[float, float]:
    """``(τ_op, δ)`` as the audit sets them: the 0.99 quantile of normal losses, and twice the 99th
    percentile of nearest-neighbour distances (leave-one-out here)."""
    with torch.no_grad():
        tau = float(loss_fn(ref).quantile(0.99))
    d = torch.cdist(ref, ref)
    d.fill_diagonal_(torch.inf)
    return tau, 2 * float(d.min(dim=1).values.quantile(0.99))


def model_loss(model: nn.Module):
    """The model's own float64 loss (mean squared residual), independent of the bound engine's chain."""
    m64 = model.double()

    def loss(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (x - m64(x)).pow(2).mean(dim=1)

    return loss


def dense_points(lo: np.ndarray, hi: np.ndarray, per_box: int, seed: int = 0) -> torch.Tensor:
    """``per_box`` uniform points per box plus its corners: ``[boxes × (per_box + 2^d), d]``."""
    lo, hi = torch.as_tensor(lo), torch.as_tensor(hi)
    n, d = lo.shape
    u = torch.rand(n, per_box, d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=DTYPE)] * d).reshape(1, -1, d).expand(n, -1, d)
    u = torch.cat([u, corners], dim=1)
    return (lo.unsqueeze(1) + u * (hi - lo).unsqueeze(1)).reshape(-1, d)


@functools.cache
def toy_case(activation: str):
    model = trained_toy(activation=activation)
    ref = torch.as_tensor(gaussian_data(100, 0), dtype=DTYPE)
    loss = model_loss(model)
    tau, delta = thresholds(loss, ref)
    net = input_network([model.encoder, model.decoder], (2,))
    lo, hi, _ = input_region(ref, widen=3.0)
    result = certify_input(
        net, ref, lo, hi, tau_op=tau, delta=delta, max_boxes=1500, generator=torch.Generator().manual_seed(0)
    )
    return model, ref, loss, tau, delta, result


# ----------------------------------------------------------------------------- soundness
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_certified_boxes_of_2d_toys_hold_under_dense_sampling(activation):
    _, ref, loss, tau, delta, result = toy_case(activation)
    assert result.counts["certified"] >= 20 and result.shares["certified"] > 0.3  # not vacuous
    x = dense_points(*result.box_bounds("certified"), per_box=400)
    assert float(loss(x).min()) > tau
    # near boxes: every sampled point within δ of the normal data
    x = dense_points(*result.box_bounds("near"), per_box=50)
    assert float(torch.cdist(x, ref).min(dim=1).values.max()) < delta
    # the shares add up and each falsified box came with a verified counterexample
    assert sum(result.shares.values()) == pytest.approx(1.0)
    for c in result.counterexamples:
        assert float(loss(torch.as_tensor(c.point)[None])) <= tau and c.distance >= delta


def test_pgd_inside_certified_boxes_of_a_4d_mlp_finds_nothing_below_tau():
    torch.manual_seed(0)
    ref = torch.randn(150, 4, dtype=DTYPE) @ torch.tensor(
        [[1.0, 0.5, 0, 0], [0, 1.0, 0.3, 0], [0, 0, 0.2, 0], [0, 0, 0, 0.2]], dtype=DTYPE
    )
    model = MLPAutoencoder([4, 8, 2, 8, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = ref.float()
    for _ in range(300):
        opt.zero_grad()
        (model(data) - data).pow(2).mean().backward()
        opt.step()
    model.eval()
    loss = model_loss(model)
    tau, delta = thresholds(loss, ref)
    net = input_network([model.encoder, model.decoder], (4,))
    lo, hi, _ = input_region(ref, widen=2.0)
    result = certify_input(net, ref, lo, hi, tau_op=tau, delta=delta, max_boxes=1500)
    box_lo, box_hi = (torch.as_tensor(a) for a in result.box_bounds("certified"))
    assert box_lo.shape[0] >= 10
    # projected Adam from 8 starts per certified box, on the model's own float64 loss
    starts = 8
    blo, bhi = box_lo.repeat_interleave(starts, 0), box_hi.repeat_interleave(starts, 0)
    x = blo + torch.rand(blo.shape, generator=torch.Generator().manual_seed(1), dtype=DTYPE) * (bhi - blo)
    x.requires_grad_(True)
    adam = torch.optim.Adam([x], lr=0.02)
    best = torch.full((x.shape[0],), torch.inf, dtype=DTYPE)
    for _ in range(60):
        adam.zero_grad()
        value = loss_with_grad(model, x)
        best = torch.minimum(best, value.detach())
        value.sum().backward()
        adam.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, bhi), blo))
    assert float(best.min()) > tau


def test_certified_boxes_of_a_maxpool_conv_autoencoder_hold_under_dense_sampling():
    """Conv → ReLU → MaxPool encoder on 2×2 images: the pooling's ReLU tournament is bounded soundly."""
    torch.manual_seed(0)
    ref = (torch.randn(150, 4, dtype=DTYPE) * torch.tensor([1.0, 0.8, 0.3, 0.2], dtype=DTYPE)).abs()
    encoder = nn.Sequential(
        nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 3, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3, 2)
    )
    decoder = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4))
    model = nn.Sequential(encoder, decoder)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        (model(ref.float()) - ref.float()).pow(2).mean().backward()
        opt.step()
    model.eval()
    loss = model_loss(model)
    tau, delta = thresholds(loss, ref)
    net = input_network([encoder, decoder], (4,))
    assert [op.name for op in net.ops].count("MaxPool2d") == 3  # two rounds of the tournament, then the last map
    lo, hi, _ = input_region(ref, widen=2.0)
    result = certify_input(net, ref, lo, hi, tau_op=tau, delta=delta, max_boxes=1500)
    assert result.counts["certified"] >= 10
    x = dense_points(*result.box_bounds("certified"), per_box=200)
    assert float(loss(x).min()) > tau
    for c in result.counterexamples:
        assert float(loss(torch.as_tensor(c.point)[None])) <= tau


def loss_with_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (x - model.double()(x)).pow(2).mean(dim=1)


# ----------------------------------------------------------------------------- blind rays
def relu_projection() -> tuple[nn.Sequential, nn.Sequential]:
    """f(a, b) = (relu(a), 0): loss ((min(a, 0))² + b²)/2, a blind ray along the positive a-axis."""
    enc, dec = nn.Sequential(nn.Linear(2, 1), nn.ReLU()), nn.Sequential(nn.Linear(1, 2))
    with torch.no_grad():
        enc[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        enc[0].bias.zero_()
        dec[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        dec[0].bias.zero_()
    return enc.eval(), dec.eval()


def ray_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a = 3 * torch.rand(200, generator=g, dtype=DTYPE)
    return torch.stack([a, 0.05 * torch.randn(200, generator=g, dtype=DTYPE)], dim=1)


@pytest.mark.parametrize("case", ["linear projection", "relu projection"])
def test_blind_ray_is_falsified_never_certified(case):
    enc, dec = (projection_ae().encoder, projection_ae().decoder) if case == "linear projection" else relu_projection()
    ref = ray_data()
    net = input_network([enc, dec], (2,))
    relu = case == "relu projection"
    tau, delta = thresholds(lambda x: ((x[:, 0].clamp(max=0) * relu).pow(2) + x[:, 1].pow(2)) / 2, ref)
    lo, hi, _ = input_region(ref, widen=3.0)
    result = certify_input(net, ref, lo, hi, tau_op=tau, delta=delta, max_boxes=1500)
    assert result.counts["falsified"] > 0 and result.shares["falsified"] > 0.01
    assert result.counterexamples and all(c.loss <= tau and c.distance >= delta for c in result.counterexamples)
    # the exact minimum loss over every certified box exceeds τ_op: no box touches the blind strip
    blo, bhi = (torch.as_tensor(a) for a in result.box_bounds("certified"))
    b_min = torch.where((blo[:, 1] <= 0) & (bhi[:, 1] >= 0), 0.0, torch.minimum(blo[:, 1].abs(), bhi[:, 1].abs()))
    a_min = torch.where(bhi[:, 0] >= 0, 0.0, bhi[:, 0].abs()) if relu else torch.zeros_like(b_min)
    assert bool(((a_min.pow(2) + b_min.pow(2)) / 2 > tau).all())
    assert not result.complete


def test_latent_map_of_a_blind_decoder_is_falsified_and_near_never_certified():
    """D(z) = (z, 0) reconstructs every decode exactly: far latent boxes are falsified, none certified."""
    m = projection_ae()
    ref = ray_data()
    net = latent_network(m.encoder, m.decoder, (1,))
    result = certify_latent(net, ref, [-3.0], [6.0], tau_op=1e-3, delta=0.5, max_boxes=400)
    assert result.counts["certified"] == 0
    assert result.shares["falsified"] > 0.2 and result.shares["near"] > 0.2
    assert all(c.point[1] == 0.0 and c.distance >= 0.5 for c in result.counterexamples)
    json.dumps(result.to_dict())


def test_certified_latent_boxes_hold_under_dense_sampling():
    model, ref, loss, tau, delta, _ = toy_case("relu")
    net = latent_network(model.encoder, model.decoder, (1,))
    with torch.no_grad():
        z = model.double().encoder(ref)
    model.float()
    lo, hi = z.min() - 3 * z.std(), z.max() + 3 * z.std()
    result = certify_latent(net, ref, [float(lo)], [float(hi)], tau_op=tau, delta=delta, max_boxes=300)
    assert result.counts["certified"] > 0
    zs = dense_points(*result.box_bounds("certified"), per_box=200)
    with torch.no_grad():
        decoded = model.double().decoder(zs)
    assert float(loss(decoded).min()) > tau


# ----------------------------------------------------------------------------- result and effort
def test_result_is_deterministic_serialisable_and_recheckable():
    *_, first = toy_case("relu")
    model, ref, _, tau, delta, _ = toy_case("relu")
    net = input_network([model.encoder, model.decoder], (2,))
    lo, hi, _ = input_region(ref, widen=3.0)
    again = certify_input(
        net, ref, lo, hi, tau_op=tau, delta=delta, max_boxes=1500, generator=torch.Generator().manual_seed(0)
    )
    a, b = first.to_dict(), again.to_dict()
    for d in (a, b):
        d.pop("seconds"), d.pop("history")
    assert a == b
    text = json.loads(json.dumps(a))
    boxes = text["boxes"]["certified"]
    levels, index = np.asarray(boxes["level"]), np.asarray(boxes["index"])
    side = (hi - lo) * np.ldexp(1.0, -levels)
    assert np.array_equal(lo + index * side, first.box_bounds("certified")[0])  # bit for bit
    assert text["region"]["space"] == "input" and text["shares"]["certified"] == first.shares["certified"]


def test_deadline_and_effort_leave_unknown_and_say_so():
    model, ref, _, tau, delta, _ = toy_case("relu")
    net = input_network([model.encoder, model.decoder], (2,))
    lo, hi, _ = input_region(ref, widen=3.0)
    stopped = certify_input(net, ref, lo, hi, tau_op=tau, delta=delta, deadline=lambda: True)
    assert stopped.cut_short and stopped.shares["unknown"] == 1.0 and stopped.evaluations == 0
    small = certify_input(net, ref, lo, hi, tau_op=tau, delta=delta, max_boxes=3, batch_size=1)
    assert not small.cut_short and small.evaluations == 3 and "max_boxes" in small.stop_reason
    assert small.shares["unknown"] > 0 and small.counts["unknown"] > 0


def test_model_loss_must_agree_before_a_counterexample_counts():
    m = projection_ae()
    ref = ray_data()
    net = input_network([m.encoder, m.decoder], (2,))
    lo, hi, _ = input_region(ref, widen=3.0)
    refuse = lambda x: torch.full((x.shape[0],), torch.inf, dtype=DTYPE)  # noqa: E731
    result = certify_input(net, ref, lo, hi, tau_op=1e-3, delta=0.5, max_boxes=200, model_loss=refuse)
    assert result.counterexamples_found == 0 and result.counts["falsified"] == 0


# ----------------------------------------------------------------------------- from a loaded model
def test_scanned_torchscript_model_gets_a_complete_certificate(tmp_path):
    """The constant autoencoder (no blind spot) loaded from TorchScript through the audit's own
    preparation: every box of the input region and of the latent box ends certified or near."""
    from helpers import save_constant_case

    from aeaudit import ScanConfig
    from aeaudit.audit import prepare
    from aeaudit.bounds.from_adapter import input_network_for, latent_network_for, model_loss_for

    model_path, data_path = save_constant_case(tmp_path)
    state = prepare(str(model_path), str(data_path), ScanConfig(quiet=True))
    b, a64 = state.baseline, state.verifier.adapter
    ref = b.reference.to("cpu", DTYPE)
    net = input_network_for(a64, ref)
    lo, hi, _ = input_region(ref, b.domain.low, b.domain.high)
    result = certify_input(net, ref, lo, hi, tau_op=b.tau_op, delta=b.min_distance, model_loss=model_loss_for(a64))
    assert result.complete and result.certified_or_near == pytest.approx(1.0) and result.shares["certified"] > 0.5
    latent = latent_network_for(a64, torch.zeros(3, 1, dtype=DTYPE), b.domain)
    result = certify_latent(latent, ref, [-5.0], [5.0], tau_op=b.tau_op, delta=b.min_distance)
    assert result.complete  # every code decodes to the data mean: all near


def test_pyod_detector_chain_follows_its_forward(tmp_path):
    """PyOD's LinearBlock applies batch norm before the activation; the chain must match the detector's
    own score (standardisation and Euclidean loss included)."""
    pytest.importorskip("pyod")
    joblib = pytest.importorskip("joblib")
    from pyod.models.auto_encoder import AutoEncoder

    from aeaudit.bounds.from_adapter import input_network_for
    from aeaudit.model.loading import load_model

    rng = np.random.default_rng(0)
    data = (rng.normal(size=(240, 4)) * [1, 2, 3, 4] + [0, 1, 2, 3]).astype(np.float32)
    det = AutoEncoder(epoch_num=2, batch_size=64, hidden_neuron_list=[8, 2], batch_norm=True, verbose=0, random_state=0)
    det.fit(data)
    joblib.dump(det, tmp_path / "ae.joblib")
    adapter = load_model(tmp_path / "ae.joblib", data, device="cpu", trust_checkpoint=True)
    net = input_network_for(adapter.to("cpu", torch.float64), torch.as_tensor(data[:64]))
    assert [op.name for op in net.ops[:4]] == ["standardize", "Linear", "BatchNorm1d", "ReLU"]
    x = torch.as_tensor(data[64:80], dtype=DTYPE)
    assert net.evaluate(x)[0].tolist() == pytest.approx(det.decision_function(data[64:80]).tolist(), rel=1e-5)


def test_seeds_from_other_searches_are_reverified_and_falsify_their_boxes():
    m = projection_ae()
    ref = ray_data()
    net = input_network([m.encoder, m.decoder], (2,))
    seeds = torch.tensor([[5.5, 0.0], [5.5, 0.9], [50.0, 0.0]], dtype=DTYPE)  # blind; too lossy; outside the box
    kwargs = dict(tau_op=1e-3, delta=0.5, seeds=seeds)
    untouched = certify_input(net, ref, [-3.0, -1.0], [6.0, 1.0], deadline=lambda: True, **kwargs)
    assert untouched.counterexamples_found == 1 and untouched.counterexamples[0].point.tolist() == [5.5, 0.0]
    result = certify_input(net, ref, [-3.0, -1.0], [6.0, 1.0], max_boxes=200, pgd_starts=1, pgd_steps=0, **kwargs)
    lo, hi = result.box_bounds("falsified")
    assert ((lo <= [5.5, 0.0]) & (hi >= [5.5, 0.0])).all(axis=1).any()
