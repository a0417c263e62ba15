"""Per-sample weight gradients of an autoencoder's loss, batched: the computation behind GradCon's
score (:mod:`aeaudit.scorers.gradcon`).

Three ways, one result (``[N, |W_i|]`` per weight, or its factors):

- **hooks** (default): one batched backward to each layer's output, then every sample's weight
  gradient from the layer's input activation and output gradient (``bmm``; convolutions via
  ``unfold``), never materialised when only dot products with a reference and norms are needed;
- **func**: ``torch.func.vmap`` over ``grad`` for the layers the hooks do not cover (grouped or 3-D
  convolutions, non-zero padding modes);
- **loop**: one backward per sample, for TorchScript modules, which run neither hooks nor
  ``torch.func``.

With ``create_graph`` all three stay differentiable in the input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..model.adapter import AutoencoderAdapter, resolve_path


def layer(module: nn.Module, name: str) -> nn.Module:
    """``module.get_submodule(name)``, which TorchScript modules do not offer."""
    return resolve_path(module, name) if name else module


def hookable(layer: nn.Module) -> bool:
    """Whether the activation + output-gradient formula covers this layer."""
    if isinstance(layer, nn.Linear):
        return True
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
        return False
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return False
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
        return all(op < s for op, s in zip(layer.output_padding, layer.stride))
    return True


def _as_2d(t: torch.Tensor, layer: nn.Module) -> tuple[torch.Tensor, tuple, tuple, tuple, tuple]:
    """View a 1-D convolution's tensors and settings as 2-D (height 1)."""
    if isinstance(layer, (nn.Conv1d, nn.ConvTranspose1d)):
        return (t.unsqueeze(2), (1, *layer.kernel_size), (1, *layer.dilation), (0, *layer.padding), (1, *layer.stride))
    return t, layer.kernel_size, layer.dilation, layer.padding, layer.stride


def _factors(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``∂L/∂W = P Qᵀ`` (as ``W.reshape(p, q)``) from the layer's input ``a`` and output
    gradient ``g``: ``P [N, p, K]``, ``Q [N, q, K]`` with ``K`` positions (1 for a plain Linear)."""
    n = a.shape[0]
    if isinstance(layer, nn.Linear):  # W[o, i] = Σ_t g[t, o] a[t, i] over any extra leading dims
        return g.reshape(n, -1, g.shape[-1]).transpose(1, 2), a.reshape(n, -1, a.shape[-1]).transpose(1, 2)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):  # W[co, ci·k] = Σ_pos g[co, pos] unfold(a)[ci·k, pos]
        a2, k, d, p, s = _as_2d(a, layer)
        return g.reshape(n, g.shape[1], -1), F.unfold(a2, k, dilation=d, padding=p, stride=s)
    # ConvTranspose is a convolution's adjoint, so the roles swap: W[ci, co·k] = Σ_pos a[ci, pos] unfold(g)[co·k, pos]
    g2, k, d, p, s = _as_2d(g, layer)
    return a.reshape(n, a.shape[1], -1), F.unfold(g2, k, dilation=d, padding=p, stride=s)


def per_sample_factors(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    layers: list[nn.Module],
    x: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``(L(x) [N], [(P_i, Q_i)])`` with per-sample ``∂L/∂W_i = P_i Q_iᵀ``, from one batched backward.

    Samples must not interact inside the model (true in eval mode), so the gradient of the summed
    loss at a layer's output holds every sample's own output gradient."""
    captured: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in layers}

    def capture(mod, inputs, out):
        # A fresh leaf where nothing upstream needs gradients; the clone shields it from in-place ops.
        y = out if out.requires_grad else out.detach().requires_grad_(True)
        captured[mod].append((inputs[0], y))
        return y.clone()

    handles = [m.register_forward_hook(capture) for m in layers]
    try:
        loss = loss_fn(x)
    finally:
        for h in handles:
            h.remove()
    if any(not captured[m] for m in layers):
        raise RuntimeError("a GradCon layer was not called by the forward pass")
    ys = [y for m in layers for _, y in captured[m]]
    grads_y = iter(torch.autograd.grad(loss.sum(), ys, create_graph=create_graph))
    factors = []
    for m in layers:
        parts = [_factors(m, a if create_graph else a.detach(), next(grads_y)) for a, _ in captured[m]]
        # a layer called more than once: its gradients add, i.e. the factors' positions concatenate
        factors.append((torch.cat([p for p, _ in parts], dim=2), torch.cat([q for _, q in parts], dim=2)))
    return loss, factors


def per_sample_grads_hooks(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    layers: list[nn.Module],
    x: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(L(x) [N], [per-sample ∂L/∂W_i flattened, [N, W_i.numel()]])``: the factors multiplied out."""
    loss, factors = per_sample_factors(loss_fn, layers, x, create_graph)
    return loss, [torch.bmm(p, q.transpose(1, 2)).reshape(x.shape[0], -1) for p, q in factors]


def factor_dot_and_norm(p: torch.Tensor, q: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(⟨G_n, ref⟩, ||G_n||)`` per sample for ``G_n = P_n Q_nᵀ``, without forming ``G`` where that is cheaper.

    The dot product is one large matrix product ``ref · Q`` over all samples and positions. The
    norm comes from the Gram matrices, ``||P Qᵀ||² = Σ (PᵀP) ⊙ (QᵀQ)``, when the number of positions
    ``K`` is small (``K(p + q) < pq``); otherwise from ``G`` itself."""
    n, pdim, k = p.shape
    qdim = q.shape[1]
    r = ref.reshape(pdim, qdim)
    if k * (pdim + qdim) >= pdim * qdim:
        g = torch.bmm(p, q.transpose(1, 2)).reshape(n, -1)
        return g @ ref.reshape(-1), g.norm(dim=1)
    rq = (q.transpose(1, 2).reshape(n * k, qdim) @ r.T).reshape(n, k, pdim)
    dot = (rq * p.transpose(1, 2)).sum(dim=(1, 2))
    gram = (torch.bmm(p.transpose(1, 2), p) * torch.bmm(q.transpose(1, 2), q)).sum(dim=(1, 2))
    return dot, gram.clamp_min(0).sqrt()


class _LossOf(nn.Module):
    """``adapter.loss`` as a module whose parameters ``torch.func.functional_call`` can swap."""

    def __init__(self, adapter: AutoencoderAdapter):
        super().__init__()
        self.net = adapter.module
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter.loss(x)


def per_sample_grads_func(
    adapter: AutoencoderAdapter, names: list[str], x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The same as :func:`per_sample_grads_hooks` with ``torch.func.vmap(grad(...))``; covers any
    layer type ``functional_call`` handles, and stays differentiable in ``x`` when ``x`` requires grad."""
    wrapper = _LossOf(adapter)
    weights = {f"net.{n}.weight": layer(adapter.module, n).weight.detach() for n in names}

    def one(w, xi):
        loss = torch.func.functional_call(wrapper, w, (xi.unsqueeze(0),))[0]
        return loss, loss

    grads, loss = torch.func.vmap(torch.func.grad(one, has_aux=True), in_dims=(None, 0))(weights, x)
    return loss, [grads[f"net.{n}.weight"].reshape(x.shape[0], -1) for n in names]


def per_sample_grads_loop(
    adapter: AutoencoderAdapter, names: list[str], x: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reference method's evaluation: one backward pass per sample. The path for TorchScript
    models, and the yardstick of checks and benchmarks; ``create_graph`` keeps it differentiable in ``x``."""
    weights = [layer(adapter.module, n).weight for n in names]
    flags = [w.requires_grad for w in weights]
    losses, grads = [], [[] for _ in names]
    try:
        for w in weights:
            w.requires_grad_(True)
        for i in range(x.shape[0]):
            with torch.enable_grad():
                loss = adapter.loss(x[i : i + 1])[0]
                for j, gw in enumerate(torch.autograd.grad(loss, weights, create_graph=create_graph)):
                    grads[j].append(gw.reshape(-1))
            losses.append(loss if create_graph else loss.detach())
    finally:
        for w, f in zip(weights, flags):
            w.requires_grad_(f)
    return torch.stack(losses), [torch.stack(g) for g in grads]
