"""The bound engine (aeaudit.bounds): conversion, relaxations, IBP ⊇ CROWN ⊇ true range, distances."""

from __future__ import annotations

import pytest
import torch
from helpers import projection_ae
from torch import nn

from aeaudit.bounds import relax
from aeaudit.bounds.convert import CannotBound, to_ops
from aeaudit.bounds.distance import ReferenceSet, far_lower_bound, near_boxes
from aeaudit.bounds.network import check_against, input_network, latent_network
from aeaudit.bounds.ops import DTYPE, Affine
from aeaudit.bounds.propagate import bound_boxes, loss_lower_bound
from aeaudit.zoo import ConvAutoencoder, MLPAutoencoder


def boxes(n: int, d: int, seed: int, half: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(n, d, generator=g, dtype=DTYPE)
    width = half * torch.rand(n, d, generator=g, dtype=DTYPE)
    return centre - width, centre + width


def sampled_range(net, lo, hi, samples: int, seed: int = 0):
    """Residual min/max and loss min over ``samples`` uniform points per box, plus the corners."""
    B, d = lo.shape
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(samples, B, d, generator=g, dtype=DTYPE)
    if d <= 4:
        corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=DTYPE)] * d).reshape(-1, 1, d).expand(-1, B, d)
        u = torch.cat([u, corners])
    x = lo + u * (hi - lo)
    with torch.no_grad():
        _, r = net.run(x.reshape(-1, d))
    r = r.reshape(u.shape[0], B, -1)
    return (
        r.min(dim=0).values,
        r.max(dim=0).values,
        net.loss(r.reshape(-1, r.shape[2])).reshape(u.shape[0], B).min(0).values,
    )


def assert_nested(net, lo, hi, samples=2000, modes=("backward", "forward")):
    """IBP ⊇ CROWN ⊇ sampled range, for the residual and the loss lower bound."""
    r_min, r_max, loss_min = sampled_range(net, lo, hi, samples)
    ibp = bound_boxes(net, lo, hi, "ibp")
    assert (ibp.residual_lo <= r_min).all() and (ibp.residual_hi >= r_max).all()
    for mode in modes:
        crown = bound_boxes(net, lo, hi, "crown", mode)
        assert (crown.residual_lo <= r_min).all() and (crown.residual_hi >= r_max).all(), mode
        assert (crown.residual_lo >= ibp.residual_lo).all() and (crown.residual_hi <= ibp.residual_hi).all(), mode
        assert (crown.loss_lower <= loss_min).all() and (crown.loss_lower >= ibp.loss_lower).all(), mode
    return ibp, crown


# ----------------------------------------------------------------------------- hand-checked bounds
def test_projection_residual_is_exact_with_crown_and_loose_with_ibp():
    """f(a, b) = (a, 0): r = (0, b) exactly, L = b²/2. CROWN cancels the a terms; IBP cannot."""
    m = projection_ae()
    net = input_network([m.encoder, m.decoder], (2,))
    lo, hi = torch.tensor([[-1.0, 0.5]], dtype=DTYPE), torch.tensor([[3.0, 2.0]], dtype=DTYPE)
    crown = bound_boxes(net, lo, hi, "crown")
    assert crown.residual_lo.tolist()[0] == pytest.approx([0.0, 0.5], abs=1e-9)
    assert crown.residual_hi.tolist()[0] == pytest.approx([0.0, 2.0], abs=1e-9)
    assert float(crown.loss_lower) == pytest.approx(0.5**2 / 2, rel=1e-9)
    assert float(crown.loss_lower) <= 0.5**2 / 2  # never above the true minimum
    ibp = bound_boxes(net, lo, hi, "ibp")
    assert ibp.residual_lo[0, 0] == pytest.approx(-4.0) and ibp.residual_hi[0, 0] == pytest.approx(4.0)


def test_single_relu_residual_crown_is_exact():
    """r(x) = x − relu(x) = min(x, 0) on [−1, 2] is [−1, 0]. IBP: x − [0, 2] = [−3, 2]; CROWN's
    triangle relaxation (upper line (2/3)(x + 1), lower line x since u ≥ −l) gives [−1, 0]."""
    net = input_network([nn.Sequential(nn.ReLU())], (1,))
    lo, hi = torch.tensor([[-1.0]], dtype=DTYPE), torch.tensor([[2.0]], dtype=DTYPE)
    ibp = bound_boxes(net, lo, hi, "ibp")
    assert (float(ibp.residual_lo), float(ibp.residual_hi)) == pytest.approx((-3.0, 2.0))
    for mode in ("backward", "forward"):
        crown = bound_boxes(net, lo, hi, "crown", mode)
        assert (float(crown.residual_lo), float(crown.residual_hi)) == pytest.approx((-1.0, 0.0), abs=1e-9)
        assert float(crown.residual_lo) <= -1.0 and float(crown.residual_hi) >= 0.0


def test_loss_lower_bound_from_intervals():
    lo = torch.tensor([[-1.0, 0.5, -3.0]], dtype=DTYPE)
    hi = torch.tensor([[1.0, 2.0, -2.0]], dtype=DTYPE)  # straddles 0; ≥ 0.5; ≤ −2
    assert float(loss_lower_bound(lo, hi, "mse")) == pytest.approx((0.25 + 4.0) / 3)
    assert float(loss_lower_bound(lo, hi, "pyod")) == pytest.approx((0.25 + 4.0) ** 0.5)
    assert float(loss_lower_bound(lo, hi, "mse")) < (0.25 + 4.0) / 3  # rounded down, never up


# ----------------------------------------------------------------------------- relaxations
@pytest.mark.parametrize(
    "name,fn",
    [
        ("Sigmoid", torch.sigmoid),
        ("Tanh", torch.tanh),
        ("ReLU", torch.relu),
        ("LeakyReLU", lambda x: nn.functional.leaky_relu(x, 0.1)),
    ],
)
def test_relaxations_enclose_the_function(name, fn):
    g = torch.Generator().manual_seed(1)
    lo = torch.cat(
        [torch.randn(300, generator=g, dtype=DTYPE) * 4, torch.tensor([-40.0, -1e-9, 0.0, 3.0], dtype=DTYPE)]
    )
    width = torch.cat(
        [torch.rand(300, generator=g, dtype=DTYPE) * 8, torch.tensor([80.0, 2e-9, 1e-14, 0.0], dtype=DTYPE)]
    )
    hi = lo + width
    a_l, b_l, a_u, b_u = relax.RELAXATIONS[name](lo, hi, 0.1)
    assert (a_l >= 0).all() and (a_u >= 0).all()
    t = torch.linspace(0, 1, 2001, dtype=DTYPE).unsqueeze(1)
    x = lo + t * (hi - lo)
    f = fn(x)
    assert (a_l * x + b_l <= f).all() and (f <= a_u * x + b_u).all()


# ----------------------------------------------------------------------------- IBP ⊇ CROWN ⊇ truth
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu"])
def test_mlp_bounds_nested(activation):
    torch.manual_seed(0)
    m = MLPAutoencoder([5, 12, 3, 12, 5], activation=activation).eval()
    net = input_network([m.encoder, m.decoder], (5,))
    ibp, crown = assert_nested(net, *boxes(12, 5, seed=2))
    assert (crown.residual_hi - crown.residual_lo).mean() < (ibp.residual_hi - ibp.residual_lo).mean()


def test_batchnorm_dropout_and_standardizer_bounds_nested():
    torch.manual_seed(1)
    enc = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.2), nn.ReLU(), nn.Linear(6, 2))
    dec = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Identity(), nn.Linear(6, 4))
    model = nn.Sequential(enc, dec)
    model(torch.randn(64, 4))  # non-trivial running statistics
    model.eval()
    mean, divisor = torch.tensor([1.0, -2.0, 0.5, 0.0]), torch.tensor([2.0, 0.5, 1.0, 3.0])
    net = input_network([enc, dec], (4,), standardizer=(mean, divisor), loss_kind="pyod")
    x = torch.randn(7, 4, dtype=DTYPE)
    with torch.no_grad():
        xm = (x - mean) / divisor
        expected = (xm - model.double()(xm)).norm(dim=1)
    model.float()
    assert net.evaluate(x)[0] == pytest.approx(expected.tolist(), rel=1e-12)
    assert_nested(net, *boxes(8, 4, seed=3))


def test_conv_bounds_nested_input_space():
    torch.manual_seed(2)
    enc = nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 2)
    )
    dec = nn.Sequential(
        nn.Linear(2, 3 * 4 * 4),
        nn.ReLU(),
        nn.Unflatten(1, (3, 4, 4)),
        nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1),
        nn.BatchNorm2d(2),
        nn.Sigmoid(),
        nn.ConvTranspose2d(2, 1, 1),
    )
    enc.eval(), dec.eval()
    net = input_network([enc, dec], (1, 8, 8))
    assert net.dim == 64
    assert_nested(net, *boxes(3, 64, seed=4, half=0.05), samples=400)


@pytest.mark.parametrize(
    "kernel,stride,dilation", [(2, 2, 1), (3, 2, 1), (3, 1, 1), (2, 1, 2), ((2, 3), (1, 2), 1), (1, 2, 1)]
)
def test_maxpool_is_an_exact_relu_tournament(kernel, stride, dilation):
    pool = nn.MaxPool2d(kernel, stride=stride, dilation=dilation)
    x = torch.randn(5, 3, 9, 8, dtype=DTYPE)
    out = x
    for op in to_ops(pool, (3, 9, 8)):
        out = op.forward(out) if isinstance(op, Affine) else out.clamp(min=0)  # the ops are affine maps and ReLUs
    expected = pool(x)
    assert out.shape == expected.shape and (out - expected).abs().max() < 1e-14


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv1d(3, 4, 3, stride=2, padding=1),
        nn.Conv1d(3, 4, 3, dilation=2, groups=1, bias=False),
        nn.ConvTranspose1d(3, 2, 4, stride=2, padding=1, output_padding=1),
        nn.AvgPool1d(3, stride=2, padding=1),
        nn.MaxPool1d(3, stride=2),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_one_d_layers_are_their_two_d_forms_exactly(layer):
    torch.manual_seed(6)
    layer = layer.double().eval()
    x = torch.randn(4, 3, 11, dtype=DTYPE)
    ops = to_ops(layer, (3, 11))
    out = x
    for op in ops:
        out = op.forward(out) if isinstance(op, Affine) else out.clamp(min=0)
    with torch.no_grad():
        expected = layer(x)
    assert out.shape == expected.shape and (out - expected).abs().max() < 1e-13
    for op in ops:  # the backward pass's contract, ⟨Λ, L x⟩ = ⟨Lᵀ Λ, x⟩, holds for the 2-D forms and the views
        if isinstance(op, Affine):
            v, lam = torch.randn(2, *op.in_shape, dtype=DTYPE), torch.randn(2, *op.out_shape, dtype=DTYPE)
            lhs, rhs = (lam * op.linear(v)).flatten(1).sum(1), (op.adjoint(lam) * v).flatten(1).sum(1)
            assert lhs.tolist() == pytest.approx(rhs.tolist(), rel=1e-10)


def test_conv1d_autoencoder_bounds_nested():
    """A 1-D convolutional autoencoder for short sensor windows (the time-series detector's shape)."""
    torch.manual_seed(7)
    enc = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(12, 2))
    dec = nn.Sequential(nn.Linear(2, 12), nn.Tanh(), nn.Unflatten(1, (4, 3)), nn.ConvTranspose1d(4, 2, 2, stride=2))
    enc.eval(), dec.eval()
    net = input_network([enc, dec], (2, 6))
    x = torch.randn(3, 12, dtype=DTYPE)
    with torch.no_grad():
        xs = x.reshape(3, 2, 6)
        expected = (xs - dec.double()(enc.double()(xs))).pow(2).flatten(1).mean(1)
    assert net.evaluate(x)[0].tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    assert_nested(net, *boxes(3, 12, seed=8, half=0.05), samples=400)


def test_conv_maxpool_autoencoder_bounds_nested():
    """Conv → ReLU → MaxPool, the usual encoder block: IBP ⊇ CROWN ⊇ the sampled range."""
    torch.manual_seed(5)
    enc = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 2))
    dec = nn.Sequential(nn.Linear(2, 64), nn.Sigmoid(), nn.Unflatten(1, (1, 8, 8)))
    enc.eval(), dec.eval()
    net = input_network([enc, dec], (1, 8, 8))
    lo, hi = boxes(3, 64, seed=6, half=0.05)
    ibp, crown = assert_nested(net, lo, hi, samples=400)
    assert (crown.loss_lower > ibp.loss_lower).any()  # the linear relaxation gains on the pooled chain


def test_affine_adjoints_match_autograd():
    """⟨Λ, L x⟩ = ⟨Lᵀ Λ, x⟩ for every linear operation of a conv chain (the backward pass's contract)."""
    torch.manual_seed(3)
    seq = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1),
        nn.AvgPool2d(2, stride=1),
        nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1, output_padding=0, groups=1),
        nn.Conv2d(2, 4, 2, groups=2),
        nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1),
        nn.Conv2d(4, 2, 3, dilation=2, padding=1),
        nn.Flatten(),
        nn.Linear(2 * 8 * 8, 5),
    ).eval()
    for op in to_ops(seq, (2, 7, 7)):
        assert isinstance(op, Affine)
        x = torch.randn(3, *op.in_shape, dtype=DTYPE)
        lam = torch.randn(3, *op.out_shape, dtype=DTYPE)
        lhs = (lam * op.linear(x)).flatten(1).sum(1)
        rhs = (op.adjoint(lam) * x).flatten(1).sum(1)
        assert lhs == pytest.approx(rhs.tolist(), rel=1e-10), op


def test_latent_chain_of_the_conv_autoencoder():
    """z ↦ a − f(a), a = clamp(D(z)) to [0, 1]: equals the model's own computation, and bounds hold."""
    torch.manual_seed(4)
    m = ConvAutoencoder(latent_dim=2, channels=(4, 8)).eval()
    net = latent_network(m.encoder, m.decoder, (2,), domain=(0.0, 1.0))
    z = torch.randn(5, 2, dtype=DTYPE)
    with torch.no_grad():
        md = m.double()
        a = md.decoder(z).clamp(0, 1)
        loss = (a - md(a)).pow(2).flatten(1).mean(1)
        m.float()
    assert check_against(net, z, loss, a) < 1e-12
    assert_nested(net, *boxes(3, 2, seed=5, half=0.05), samples=300, modes=("forward",))


# ----------------------------------------------------------------------------- conversion
def test_scripted_models_convert_like_the_originals():
    for model, shape in (
        (MLPAutoencoder([3, 4, 1, 4, 3], activation="tanh").eval(), (3,)),
        (ConvAutoencoder(channels=(2, 4)).eval(), (1, 28, 28)),
    ):
        scripted = torch.jit.script(model)
        plain = input_network([model.encoder, model.decoder], shape)
        script = input_network([scripted.encoder, scripted.decoder], shape)
        assert [repr(op) for op in plain.ops] == [repr(op) for op in script.ops]
        x = torch.rand(2, plain.dim, dtype=DTYPE)
        assert script.evaluate(x)[0].tolist() == pytest.approx(plain.evaluate(x)[0].tolist(), rel=1e-12)


@pytest.mark.parametrize(
    "part,reason",
    [
        (nn.Sequential(nn.Linear(2, 2), nn.GELU()), "model.1 (GELU): no bound propagation"),
        (nn.Sequential(nn.Unflatten(1, (1, 2, 1)), nn.MaxPool2d(2, padding=1)), "model.1 (MaxPool2d): padding"),
        (nn.Sequential(nn.LeakyReLU(-0.5)), "negative_slope"),
        (nn.Sequential(nn.Linear(3, 2)), "expects 3 features"),
    ],
)
def test_unsupported_layers_say_why(part, reason):
    with pytest.raises(CannotBound, match=reason.replace("(", r"\(").replace(")", r"\)")):
        input_network([part.eval()], (2,))


def test_methods_training_mode_and_forward_mismatch_are_refused():
    with pytest.raises(CannotBound, match="not a module"):
        input_network([lambda x: x], (2,))
    with pytest.raises(CannotBound, match="training mode"):
        input_network([nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)).train()], (2,))

    class Skip(nn.Module):  # forward adds the input back: not decoder(encoder(x))
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = nn.Sequential(nn.Linear(2, 1)), nn.Sequential(nn.Linear(1, 2))

        def forward(self, x):
            return self.decoder(self.encoder(x)) + x

    m = Skip().eval().double()
    net = input_network([m.encoder, m.decoder], (2,))
    x = torch.randn(4, 2, dtype=DTYPE)
    with torch.no_grad():
        loss = (x - m(x)).pow(2).mean(1)
    with pytest.raises(CannotBound, match="does not reproduce"):
        check_against(net, x, loss)


# ----------------------------------------------------------------------------- distances
def test_box_distances_match_brute_force():
    g = torch.Generator().manual_seed(6)
    ref = torch.randn(500, 3, generator=g, dtype=DTYPE)
    lo, hi = boxes(40, 3, seed=7, half=0.4)
    lo, hi = lo * 2, hi * 2
    refs = ReferenceSet(ref)
    far_lower, near = far_lower_bound(refs, lo, hi, shortlist=8), near_boxes(refs, lo, hi, 0.9, shortlist=8)
    p = ref.unsqueeze(0)
    exact = ((lo.unsqueeze(1) - p).clamp(min=0) + (p - hi.unsqueeze(1)).clamp(min=0)).pow(2).sum(2).sqrt().min(1).values
    assert (far_lower <= exact + 1e-12).all()
    assert (far_lower >= exact - 1e-9).sum() >= 30  # the shortlist finds the exact distance for most boxes
    corner = torch.maximum((lo.unsqueeze(1) - p).pow(2), (hi.unsqueeze(1) - p).pow(2)).sum(2).min(1).values.sqrt()
    within = corner < 0.9
    assert (near <= within).all()  # never claims "near" wrongly
    assert near.sum() >= within.sum() - 2
