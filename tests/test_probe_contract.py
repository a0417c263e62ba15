"""The contract every registered probe keeps (as the scorer contract does for scores): the same seed
gives the same candidates and findings; every candidate lies inside the domain; every finding is
verified and re-measures to what it says; a stop ends the work; the model is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import line_data, projection_ae, trained_toy

from aeaudit.audit import prepare
from aeaudit.config import ScanConfig
from aeaudit.effort import Stop
from aeaudit.probes import PROBES, make_probe

# small work for every probe; each probe takes the keys it has
QUICK = {
    "max_boxes": 400,
    "steps": 20,
    "starts": 8,
    "farthest_starts": 4,
    "samples": 256,
    "resolution": 30,
    "random_rays": 4,
    "sphere_starts": 8,
    "sphere_steps": 10,
    "optimised_rays": 2,
    "pca_directions": 2,
}
BOX = (-6.0, 6.0)


@pytest.fixture(scope="module", params=["linear", "relu"])
def state(request):
    """The projection AE (affine, a blind axis) and the trained ReLU toy, in a bounded box so that
    "inside the domain" is a real constraint."""
    model = projection_ae() if request.param == "linear" else trained_toy()
    config = ScanConfig().with_overrides(quiet=True, scorers=(), device="cpu", seed=4, bounds=f"{BOX[0]},{BOX[1]}")
    return prepare(model, line_data(300), config)


def _snapshot(module: torch.nn.Module):
    return (
        {k: v.clone() for k, v in module.state_dict().items()},
        module.training,
        [p.requires_grad for p in module.parameters()],
    )


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_contract(name, state):
    before = _snapshot(state.adapter.module)
    runs = [make_probe(name, QUICK).run(state.context(state.recon_objective())) for _ in range(2)]
    a, b = runs
    assert a.status in ("complete", "skipped"), (a.status, a.reason)
    # the same seed: the same candidates and findings, bit for bit
    assert (a.candidates is None) == (b.candidates is None)
    if a.candidates is not None:
        assert torch.equal(a.candidates.x, b.candidates.x)
        inside = (a.candidates.x >= BOX[0] - 1e-6) & (a.candidates.x <= BOX[1] + 1e-6)
        assert bool(inside.all()), f"{name} proposed a candidate outside the domain"
    assert [(f.loss, f.distance) for f in a.findings] == [(f.loss, f.distance) for f in b.findings]
    # findings are verified: re-measured in float64 against all normal data, they say what they claim
    b64 = state.baseline
    model64 = state.adapter.to("cpu", torch.float64)
    normal = b64.normal.double().reshape(len(b64.normal), -1)
    for f in a.findings:
        x = torch.as_tensor(f.x, dtype=torch.float64)[None]
        assert f.verified and f.loss == pytest.approx(float(model64.losses(x)[0]), rel=1e-9, abs=1e-30)
        assert f.distance == pytest.approx(float((normal - x.reshape(1, -1)).norm(dim=1).min()), rel=1e-9)
        assert b64.severity(f.loss, f.distance) == f.severity
    # the model is left as it was: weights, eval mode, gradient flags, no hooks
    after = _snapshot(state.adapter.module)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:]
    assert not any(m._forward_hooks or m._backward_hooks for m in state.adapter.module.modules())


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_stops_when_told(name, state):
    """A time limit already passed: the probe does (almost) nothing and says it was cut short."""
    ctx = state.context(state.recon_objective())
    ctx.stop = Stop(0.0)
    result = make_probe(name, {**QUICK, "steps": 10**6, "samples": 2**30}).run(ctx)
    assert result.status in ("incomplete", "skipped"), (result.status, result.reason)
    if result.status == "incomplete":
        assert "time limit" in result.reason and result.seconds < 5.0
        assert np.isfinite(result.seconds)
