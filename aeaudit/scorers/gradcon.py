"""GradCon: the gradient-alignment score of Kwon et al., "Backpropagated Gradient Representations
for Anomaly Detection" (ECCV 2020).

``S(x) = L(x) − β · mean_i cos(∂L(x)/∂φ_i, ref_i)`` over the weights ``φ_i`` of the decoder's
Linear / Conv / ConvTranspose layers. A normal input asks for a weight update aligned with the
reference gradient ``ref_i``; an anomaly does not, so its cosine is lower and its score higher.

``ref_i`` comes from the checkpoint (``checkpoint_extras["gradcon_reference"]``, saved by a model
trained with GradCon's constraint) or, post hoc, as the mean per-sample gradient over the normal
reference data — an extension of the paper for models trained without the constraint.

Per-sample gradients are batched (:mod:`aeaudit.scorers.per_sample`): one batched backward to
each decoder layer's output and every sample's weight gradient formed from the layer's activation
and output gradient, or ``torch.func.vmap`` over ``grad`` where that does not apply; both stay
differentiable in ``x``, which the adaptive search needs.

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
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..model.adapter import AutoencoderAdapter, resolve_path
from ..model.eager import eager_twin, matches
from .base import Scorer, TrainingObjective
from .per_sample import (
    factor_dot_and_norm,
    hookable,
    layer,
    per_sample_factors,
    per_sample_grads_func,
    per_sample_grads_loop,
)

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
        if self.method == "hooks" and not all(map(hookable, layers)):
            raise InputError(
                "gradcon method 'hooks' does not cover this model's decoder layers; use method auto or func"
            )
        if self.method != "auto":
            self.method_ = self.method
        elif scripted and self.twin_ is None:
            self.method_ = "loop"
        else:
            self.method_ = "hooks" if all(map(hookable, layers)) else ("loop" if scripted else "func")
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
