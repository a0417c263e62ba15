"""GradCon: the gradient-alignment score of Kwon et al., "Backpropagated Gradient Representations
for Anomaly Detection" (ECCV 2020).

``S(x) = L(x) − β · mean_i cos(∂L(x)/∂φ_i, ref_i)`` over the weights ``φ_i`` of the decoder's
Linear / Conv / ConvTranspose layers. A normal input asks for a weight update aligned with the
reference gradient ``ref_i``; an anomaly does not, so its cosine is lower and its score higher.

``ref_i`` comes from the checkpoint (``checkpoint_extras["gradcon_reference"]``, saved by a model
trained with GradCon's constraint) or, post hoc, as the mean per-sample gradient over the normal
reference data — an extension of the paper for models trained without the constraint.

Per-sample gradients are batched. The default path runs one batched backward to each decoder
layer's output, then forms every sample's weight gradient from the layer's input activation and
output gradient (``bmm``; convolutions via ``unfold``). Layers that path does not cover (grouped or
3-D convolutions, non-zero padding modes) use ``torch.func.vmap`` over ``grad`` instead. With
``create_graph`` both stay differentiable in ``x``, which the adaptive search needs.

TorchScript models run neither Python hooks nor ``torch.func``. When the scripted decoder is a
``Sequential`` of standard layers, its eager twin (:mod:`aeaudit.model.eager`, checked against the
scripted decoder on normal latents) takes its place in the score, and the batched path applies;
otherwise the score takes one backward pass per sample (the reference method's loop; correct, and
differentiable, but slow).

The training side (``aeaudit harden --method gradcon``) lives here too: ``MSE − α · mean_i
cos(∂MSE/∂W_i, ref_i)`` over the same decoder weights, ``ref_i`` the plain running mean of each
weight's gradient after the backward pass of the total loss (0 on the first step), saved with the
model under ``gradcon_reference`` because the score needs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..model.adapter import AutoencoderAdapter, resolve_path
from ..model.eager import eager_twin, matches
from .base import Scorer, TrainingObjective

REFERENCE_KEY = "gradcon_reference"
METHODS = ("auto", "hooks", "func", "loop")
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
WEIGHT_LAYER_NAMES = {cls.__name__ for cls in WEIGHT_LAYERS}  # TorchScript keeps them as ``original_name``
COS_EPS = 1e-12


# --------------------------------------------------------------------------- which layers
def decoder_weight_layers(adapter: AutoencoderAdapter) -> tuple[list[str], str]:
    """Names (as in ``named_modules``) of the weight layers GradCon uses, in call order, and a note.

    With an encoder/decoder split: the layers the decoder calls. Without one: the later half of
    the layers the forward pass calls (GradCon's decoder, guessed by position). TorchScript
    models, which run no hooks, give the layers in module order."""
    module = adapter.module
    if isinstance(module, torch.jit.ScriptModule):
        return _script_weight_layers(adapter)
    names = {m: n for n, m in module.named_modules() if isinstance(m, WEIGHT_LAYERS) and m.weight is not None}
    if not names:
        raise ValueError("the model has no Linear/Conv/ConvTranspose layer modules to take weight gradients of")
    called: list[str] = []

    def record(mod, inputs, output):
        if names[mod] not in called:
            called.append(names[mod])

    handles = [m.register_forward_hook(record) for m in names]
    try:
        with torch.no_grad():
            if adapter.has_latent:
                adapter.decoder(torch.zeros(1, *adapter.latent_shape, device=adapter.device, dtype=adapter.dtype))
            else:
                adapter.loss(torch.zeros(1, *adapter.input_shape, device=adapter.device, dtype=adapter.dtype))
    finally:
        for h in handles:
            h.remove()
    if not called:
        raise ValueError("the decoder calls no Linear/Conv/ConvTranspose layer modules")
    if adapter.has_latent:
        return called, f"decoder weight layers: {', '.join(called)}"
    later = called[len(called) // 2 :]
    return later, (
        f"no encoder/decoder split: used the later half of the weight layers as the decoder ({', '.join(later)})"
    )


def _script_weight_layers(adapter: AutoencoderAdapter) -> tuple[list[str], str]:
    module = adapter.module
    layers = [n for n, m in module.named_modules() if getattr(m, "original_name", "") in WEIGHT_LAYER_NAMES]
    if adapter.has_latent:
        prefix = (adapter.decoder_path or "").split("[")[0] + "."
        names = [n for n in layers if n.startswith(prefix)]
        if not names:
            raise ValueError(
                f"the TorchScript decoder {adapter.decoder_path!r} is a method, not a submodule with "
                "Linear/Conv/ConvTranspose layers; name a decoder submodule with --decoder"
            )
        return names, f"decoder weight layers (TorchScript, module order): {', '.join(names)}"
    if not layers:
        raise ValueError("the model has no Linear/Conv/ConvTranspose layer modules to take weight gradients of")
    later = layers[len(layers) // 2 :]
    return later, (
        f"no encoder/decoder split: used the later half of the weight layers as the decoder "
        f"({', '.join(later)}, TorchScript, module order)"
    )


def layer(module: nn.Module, name: str) -> nn.Module:
    """``module.get_submodule(name)``, which TorchScript modules do not offer."""
    return resolve_path(module, name) if name else module


# --------------------------------------------------------------------------- per-sample gradients
def _hookable(layer: nn.Module) -> bool:
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


def gradcon_score(loss: torch.Tensor, grads: list[torch.Tensor], refs: list[torch.Tensor], beta: float) -> torch.Tensor:
    """``L − β · mean_i cos(g_i, ref_i)`` per sample, from materialised per-sample gradients."""
    return _combine(loss, [(g @ r, g.norm(dim=1)) for g, r in zip(grads, refs)], refs, beta)


def _combine(
    loss: torch.Tensor, dots_norms: list[tuple[torch.Tensor, torch.Tensor]], refs: list[torch.Tensor], beta: float
) -> torch.Tensor:
    cos = torch.stack([dot / (norm * r.norm()).clamp_min(COS_EPS) for (dot, norm), r in zip(dots_norms, refs)])
    return loss - beta * cos.mean(dim=0)


# --------------------------------------------------------------------------- the scorer
@dataclass(eq=False)
class GradConScorer(Scorer):
    """GradCon's score with the checkpoint's reference gradients, or post-hoc ones.

    Args:
        beta: weight of the gradient-alignment term (the paper's test-time β = 0.12).
        method: per-sample gradient path: ``"auto"`` (activation/output-gradient products where
            every layer allows it, else ``torch.func``; for TorchScript one backward per sample),
            ``"hooks"``, ``"func"`` or ``"loop"``.
        batch_size: inputs whose per-sample gradients are formed together (memory grows with it:
            ``batch_size × decoder weights`` values; beyond ~128 the GradCon CAE gets no faster on a CPU).
    """

    name: ClassVar[str] = "gradcon"
    differentiable: ClassVar[bool] = True
    description: ClassVar[str] = "GradCon: reconstruction loss minus β × gradient alignment (Kwon et al., ECCV 2020)"
    checkpoint_keys: ClassVar[tuple[str, ...]] = (REFERENCE_KEY,)
    training_parameters: ClassVar[tuple[str, ...]] = ("alpha",)
    needs_gradients: ClassVar[bool] = True

    beta: float = 0.12
    method: str = "auto"
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"gradcon: method {self.method!r}: choose {', '.join(METHODS)}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise InputError(f"gradcon: beta = {self.beta!r} must be a finite number ≥ 0")
        if self.batch_size < 1:
            raise InputError(f"gradcon: batch_size = {self.batch_size!r} must be at least 1")

    def skip_reason(self, adapter: AutoencoderAdapter) -> str | None:
        if (reason := super().skip_reason(adapter)) is not None:
            return reason
        try:
            decoder_weight_layers(adapter)
        except ValueError as exc:
            return str(exc)
        return None

    def _fit(self, adapter: AutoencoderAdapter, reference: torch.Tensor, heldout: torch.Tensor) -> None:
        names, note = decoder_weight_layers(adapter)
        self.layer_names_ = names
        scripted = isinstance(adapter.module, torch.jit.ScriptModule)
        self.twin_ = self._decoder_twin(adapter, reference) if scripted and self.method in ("auto", "hooks") else None
        if scripted and self.twin_ is None and self.method in ("hooks", "func"):
            raise InputError(
                f"gradcon method {self.method!r} cannot run on this TorchScript model (its decoder is "
                "not a Sequential of standard layers); use method auto or loop"
            )
        layers = self._layers()
        if self.method == "hooks" and not all(map(_hookable, layers)):
            raise InputError(
                "gradcon method 'hooks' does not cover this model's decoder layers; use method auto or func"
            )
        if self.method != "auto":
            self.method_ = self.method
        elif scripted and self.twin_ is None:
            self.method_ = "loop"
        else:
            self.method_ = "hooks" if all(map(_hookable, layers)) else ("loop" if scripted else "func")
        if scripted and self.twin_ is not None:
            note += "; TorchScript decoder run through its eager twin (checked equal on normal latents)"
        elif scripted:
            note += "; one backward pass per sample (TorchScript): slow, save a state_dict for the batched path"
        stored = adapter.checkpoint_extras.get(REFERENCE_KEY)
        if stored is not None:
            self.reference_ = _stored_reference(stored, adapter, names)
            self.note_ = f"reference gradients from the checkpoint; {note}"
        else:
            self.reference_ = self._posthoc_reference(reference)
            self.posthoc = True
            self.note_ = f"post-hoc: reference = mean per-sample gradient over normal data; {note}"

    @classmethod
    def training_objective(cls, adapter: AutoencoderAdapter, alpha: float = 0.03, **_: Any) -> GradConObjective:
        return GradConObjective(adapter, alpha, decoder_weights(adapter))

    @staticmethod
    def _decoder_twin(adapter: AutoencoderAdapter, reference: torch.Tensor) -> nn.Module | None:
        """An eager twin of a scripted decoder submodule that decodes the normal latents the same."""
        if not adapter.has_latent or "[" in adapter.decoder_path:
            return None
        try:
            decoder = resolve_path(adapter.module, adapter.decoder_path)
        except AttributeError:
            return None
        twin = eager_twin(decoder) if isinstance(decoder, nn.Module) else None
        if twin is None:
            return None
        with torch.no_grad():
            z = adapter.encode(reference[:64].to(adapter.device, adapter.dtype))
        return twin if matches(twin, decoder, z) else None

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction loss, through the decoder's eager twin where there is one."""
        adapter = self.adapter_
        if self.twin_ is None:
            return adapter.loss(x)
        xm = adapter.to_model_space(x)
        return adapter.loss_of_residual(xm - self.twin_(adapter.encoder(xm)))

    def _layers(self) -> list[nn.Module]:
        if self.twin_ is None:
            return [layer(self.adapter_.module, n) for n in self.layer_names_]
        prefix = len(self.adapter_.decoder_path) + 1
        return [layer(self.twin_, n[prefix:]) for n in self.layer_names_]

    def _posthoc_reference(self, reference: torch.Tensor) -> list[torch.Tensor]:
        """Mean per-sample gradient over ``reference``: per batch, ``Σ_n P_n Q_nᵀ`` is one matrix product."""
        total = None
        for i in range(0, reference.shape[0], self.batch_size):
            xb = reference[i : i + self.batch_size].to(self.adapter_.device, self.adapter_.dtype)
            with torch.enable_grad():
                if self.method_ == "hooks":
                    _, factors = per_sample_factors(self._loss, self._layers(), xb)
                    sums = [
                        (p.detach().transpose(0, 1).flatten(1) @ q.detach().transpose(0, 1).flatten(1).T).reshape(-1)
                        for p, q in factors
                    ]
                elif self.method_ == "loop":
                    sums = [g.sum(dim=0) for g in per_sample_grads_loop(self.adapter_, self.layer_names_, xb)[1]]
                else:
                    sums = [
                        g.detach().sum(dim=0) for g in per_sample_grads_func(self.adapter_, self.layer_names_, xb)[1]
                    ]
            total = sums if total is None else [t + s for t, s in zip(total, sums)]
        return [t / reference.shape[0] for t in total]

    def _score_batch(self, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
        if self.method_ == "hooks":
            loss, factors = per_sample_factors(self._loss, self._layers(), x, create_graph)
            dots_norms = [factor_dot_and_norm(p, q, r) for (p, q), r in zip(factors, self.reference_)]
            return _combine(loss, dots_norms, self.reference_, self.beta)
        if self.method_ == "loop":
            loss, grads = per_sample_grads_loop(self.adapter_, self.layer_names_, x, create_graph)
        else:
            loss, grads = per_sample_grads_func(self.adapter_, self.layer_names_, x)
        return gradcon_score(loss, grads, self.reference_, self.beta)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        with torch.enable_grad():  # the score itself is made of gradients
            for i in range(0, x.shape[0], self.batch_size):
                s = self._score_batch(x[i : i + self.batch_size], create_graph=x.requires_grad)
                outs.append(s if x.requires_grad else s.detach())
        return torch.cat(outs) if outs else torch.empty(0, device=x.device, dtype=x.dtype)


def _stored_reference(stored: dict, adapter: AutoencoderAdapter, names: list[str]) -> list[torch.Tensor]:
    """The checkpoint's ``{"<layer>.weight": tensor}`` as flat tensors in layer order; clear errors if it does not fit."""
    if not isinstance(stored, dict):
        raise InputError(
            f"checkpoint key {REFERENCE_KEY!r} must map parameter names to tensors, got {type(stored).__name__}"
        )
    refs = []
    for n in names:
        key = f"{n}.weight"
        weight = layer(adapter.module, n).weight
        if key not in stored:
            raise InputError(
                f"checkpoint key {REFERENCE_KEY!r} has no entry {key!r} (has {', '.join(map(str, stored))}); "
                "save one reference gradient per decoder weight"
            )
        ref = torch.as_tensor(stored[key])
        if ref.numel() != weight.numel():
            raise InputError(
                f"{REFERENCE_KEY}[{key!r}] has {ref.numel()} values but the weight has {weight.numel()} "
                f"(shape {tuple(weight.shape)})"
            )
        if not math.isfinite(float(ref.double().norm())):
            raise InputError(f"{REFERENCE_KEY}[{key!r}] holds NaN or inf")
        refs.append(ref.reshape(-1).to(adapter.device, adapter.dtype))
    return refs


def decoder_weights(adapter: AutoencoderAdapter) -> dict[str, nn.Parameter]:
    """The decoder's layer weights by parameter name: the layers GradCon's training term and score use."""
    if not adapter.has_latent:
        raise InputError(f"--method gradcon needs the decoder: {adapter.split_reason}")
    try:
        names, _ = decoder_weight_layers(adapter)
    except ValueError as exc:
        raise InputError(f"--method gradcon: {exc}") from None
    return {f"{n}.weight": layer(adapter.module, n).weight for n in names}


class GradConObjective(TrainingObjective):
    """GradCon's training loss; selection on held-out MSE (the alignment term is measured against a
    reference that keeps moving during training, so its values at different steps do not compare)."""

    selection = "lowest held-out MSE on normal data"

    def __init__(self, adapter: AutoencoderAdapter, alpha: float, weights: dict[str, nn.Parameter]):
        super().__init__(adapter)
        self.alpha = alpha
        self.names = list(weights)
        self.weights = list(weights.values())
        self.grad_sum = [torch.zeros_like(w) for w in self.weights]
        self.count = 0

    def mse(self, xm: torch.Tensor) -> torch.Tensor:
        return (self.adapter.forward_model(xm) - xm).pow(2).mean()

    def alignment(self, grads: list[torch.Tensor]) -> torch.Tensor:
        cos = [
            F.cosine_similarity(g.reshape(1, -1), (s / self.count).reshape(1, -1), eps=COS_EPS)[0]
            for g, s in zip(grads, self.grad_sum)
        ]
        return torch.stack(cos).mean()

    def loss(self, xm: torch.Tensor) -> torch.Tensor:
        mse = self.mse(xm)
        if self.count == 0 or self.alpha == 0:  # no reference yet: the gradient term is 0 on the first step
            return mse
        grads = torch.autograd.grad(mse, self.weights, create_graph=True)
        return mse - self.alpha * self.alignment(grads)

    def after_backward(self) -> None:
        for s, w in zip(self.grad_sum, self.weights):
            if w.grad is not None:
                s.add_(w.grad.detach())
        self.count += 1

    @torch.no_grad()
    def heldout(self, xm: torch.Tensor, batch_size: int) -> float:
        total = sum(
            float(self.mse(xm[i : i + batch_size])) * xm[i : i + batch_size].shape[0]
            for i in range(0, xm.shape[0], batch_size)
        )
        return total / xm.shape[0]

    def snapshot(self) -> dict[str, torch.Tensor]:
        """The reference gradients at this step, by parameter name."""
        return {n: (s / max(self.count, 1)).detach().cpu().clone() for n, s in zip(self.names, self.grad_sum)}

    def checkpoint_extras(self, snapshot: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        return {REFERENCE_KEY: snapshot if snapshot is not None else self.snapshot()}
