"""Hardening: retrain an autoencoder with a remedy from the papers, so that it can be re-audited.

Two remedies, both on the same architecture (fine-tuned, or retrained from fresh weights):

- ``toll`` — targeted collapse ("Toll", seeds/003): per-sample loss ``||x̂ − x||₂ + β·||z||₂``
  (plain norms of the flattened tensors, batch mean). The code norm keeps normal codes
  together, so inputs whose codes land far out score high even when reconstructed well;
  the same expression with the same β is the anomaly score, so β is saved with the model.
- ``gradcon`` — gradient constraint (GradCon, Kwon et al., ECCV 2020, seeds/000):
  ``MSE − α · mean_i cos(∂MSE/∂W_i, ref_i)`` over the decoder's layer weights ``W_i`` (double
  backward), ``ref_i`` the plain running mean of each weight's gradient after the backward
  pass of the total loss; the term is 0 on the first step. ``ref_i`` is saved with the model
  because the GradCon score needs it.

Model selection uses normal data only: the data is split with the audit's own seeded split
(the same held-out part the audit later calibrates its thresholds on, never trained on) and
the weights with the lowest held-out loss are kept (Toll: its own loss; GradCon: the MSE).

The result is written in the input's format family so that ``aeaudit scan`` loads it the same
way (see :meth:`HardenResult.save` and docs/hardening.md).
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
import io
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .baseline import split_indices
from .data import load_data, shape_samples
from .errors import InputError
from .model.adapter import AutoencoderAdapter
from .model.formats import TORCHSCRIPT_EXTRAS
from .model.loading import LoadOptions, file_sha256, load_model
from .model.layout import unwrap_layout
from .model.shapes import finalize_shapes
from .progress import Reporter
from .report.atomic import atomic_path

log = logging.getLogger(__name__)

METHODS = ("toll", "gradcon")
DEFAULT_BETA = 10.0  # Toll's value for Arrhythmia and CIFAR-10; its MNIST runs used 1000 on standardised pixels
DEFAULT_ALPHA = 0.03  # GradCon's training weight of the gradient term
REFERENCE_KEY = "gradcon_reference"  # the keys the scorers read (docs/scorers.md)
BETA_KEY = "toll_beta"
META_KEY = "aeaudit"
EVALUATIONS = 50  # held-out evaluations per run (model selection)
SELECTION = {"toll": "lowest held-out Toll loss on normal data", "gradcon": "lowest held-out MSE on normal data"}


@dataclass
class HardenResult:
    """The hardened model and how it was selected.

    ``adapter``: the selected weights, in eval mode (ready for :func:`aeaudit.scan`).
    ``history``: one row per held-out evaluation: ``step``, ``train_loss`` (mean since the last
    evaluation) and ``heldout`` (the selection loss on held-out normal data: Toll's own loss, or
    the MSE for GradCon).
    ``reference``: GradCon's reference gradients by parameter name (``None`` for Toll).
    """

    adapter: AutoencoderAdapter
    method: str
    output_format: str
    settings: dict[str, Any]
    history: list[dict[str, float]]
    best_step: int
    heldout_before: float
    heldout_after: float
    reference: dict[str, torch.Tensor] | None = None
    source: str = ""
    source_sha256: str = ""

    @property
    def module(self) -> nn.Module:
        return self.adapter.module

    def metadata(self) -> dict[str, Any]:
        """What the checkpoint records under ``"aeaudit"`` (plain types: loads with weights_only)."""
        return {"method": self.method, **self.settings, "best_step": self.best_step,
                "selection": SELECTION[self.method],
                "heldout_objective_before": self.heldout_before, "heldout_objective_after": self.heldout_after,
                "source": self.source, "source_sha256": self.source_sha256, "version": __version__}

    def checkpoint_extras(self) -> dict[str, Any]:
        extras: dict[str, Any] = {META_KEY: self.metadata()}
        if self.method == "toll":
            extras[BETA_KEY] = float(self.settings["beta"])
        if self.reference is not None:
            extras[REFERENCE_KEY] = {k: v.detach().cpu().clone() for k, v in self.reference.items()}
        return extras

    def save(self, path: str | Path) -> Path:
        """Write the hardened model; ``aeaudit scan PATH`` loads it with the same options as the input.

        TorchScript in → TorchScript out (extras in the archive's ``extra/aeaudit_extras.pt``);
        a state_dict or in-memory module → ``{"state_dict": ..., "toll_beta" | "gradcon_reference": ...,
        "aeaudit": {...}}`` (loads with ``weights_only=True`` and ``--arch``); a pickled module →
        ``{"model": module, ...}`` (loads with ``--trust-checkpoint``)."""
        path = Path(path)
        if self.source and path.exists() and path.resolve() == Path(self.source).resolve():
            raise InputError(f"-o {path}: that is the input model; write the hardened model to a new file")
        extras = self.checkpoint_extras()
        module = unwrap_layout(self.adapter.module)
        with atomic_path(path) as tmp:
            if self.output_format == "torchscript":
                buffer = io.BytesIO()
                torch.save(extras, buffer)
                torch.jit.save(module, str(tmp), _extra_files={TORCHSCRIPT_EXTRAS: buffer.getvalue()})
            elif self.output_format == "pickle":
                torch.save({"model": copy.deepcopy(module).cpu(), **extras}, tmp)
            else:
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                torch.save({"state_dict": state, **extras}, tmp)
        return path


# --------------------------------------------------------------------------- objectives
class _Objective(ABC):
    """A training objective over model-space batches; ``heldout`` is the selection criterion."""

    def __init__(self, adapter: AutoencoderAdapter):
        self.adapter = adapter

    @abstractmethod
    def loss(self, xm: torch.Tensor) -> torch.Tensor:
        """The batch loss to minimise."""

    def after_backward(self) -> None:
        """Hook after ``backward()`` of the total loss (GradCon updates its reference here)."""

    @abstractmethod
    def heldout(self, xm: torch.Tensor, batch_size: int) -> float:
        """The training objective on held-out normal data (lower is better)."""


class _Toll(_Objective):
    def __init__(self, adapter: AutoencoderAdapter, beta: float):
        super().__init__(adapter)
        self.beta = beta

    def per_sample(self, xm: torch.Tensor) -> torch.Tensor:
        z = self.adapter.encoder(xm)
        rec = self.adapter.decoder(z)
        n = xm.shape[0]
        return (rec - xm).reshape(n, -1).norm(dim=1) + self.beta * z.reshape(n, -1).norm(dim=1)

    def loss(self, xm: torch.Tensor) -> torch.Tensor:
        return self.per_sample(xm).mean()

    @torch.no_grad()
    def heldout(self, xm: torch.Tensor, batch_size: int) -> float:
        total = sum(float(self.per_sample(xm[i : i + batch_size]).sum()) for i in range(0, xm.shape[0], batch_size))
        return total / xm.shape[0]


class _GradCon(_Objective):
    def __init__(self, adapter: AutoencoderAdapter, alpha: float, weights: dict[str, nn.Parameter]):
        super().__init__(adapter)
        self.alpha = alpha
        self.names = list(weights)
        self.weights = list(weights.values())
        self.grad_sum = [torch.zeros_like(w) for w in self.weights]
        self.count = 0

    def mse(self, xm: torch.Tensor) -> torch.Tensor:
        rec = self.adapter._forward_model(xm)
        return (rec - xm).pow(2).mean()

    def alignment(self, grads: list[torch.Tensor]) -> torch.Tensor:
        cos = [torch.nn.functional.cosine_similarity(g.reshape(1, -1), (s / self.count).reshape(1, -1), eps=1e-12)[0]
               for g, s in zip(grads, self.grad_sum)]
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
        """Held-out MSE. The alignment term is left out: it is measured against a reference that
        keeps moving during training, so its values at different steps are not comparable."""
        total = sum(float(self.mse(xm[i : i + batch_size])) * xm[i : i + batch_size].shape[0]
                    for i in range(0, xm.shape[0], batch_size))
        return total / xm.shape[0]

    def reference(self) -> dict[str, torch.Tensor]:
        return {n: (s / max(self.count, 1)).detach().cpu().clone() for n, s in zip(self.names, self.grad_sum)}


# --------------------------------------------------------------------------- helpers
def _load(model: Any, options: LoadOptions) -> AutoencoderAdapter:
    if isinstance(model, AutoencoderAdapter):
        return model.to()  # a copy: the caller's model is left untouched
    if isinstance(model, nn.Module):
        model = copy.deepcopy(model)
    return load_model(model, options)


def _output_format(adapter: AutoencoderAdapter) -> str:
    fmt = adapter.card.format
    if adapter.loss_kind == "pyod" or fmt.startswith("pyod"):
        raise InputError("harden cannot write a PyOD detector back; save its .model's state_dict and harden that with --arch")
    if fmt == "torch.export":
        raise InputError("harden cannot retrain a torch.export (.pt2) program; harden the TorchScript or state_dict "
                         "version of the model, then export the result")
    if fmt == "torchscript":
        return "torchscript"
    if fmt.startswith("pickle"):
        return "pickle"
    return "state_dict"


def decoder_weights(adapter: AutoencoderAdapter) -> dict[str, nn.Parameter]:
    """The decoder's layer weights by parameter name — the layers GradCon's gradient term and
    score use (:func:`aeaudit.scorers.gradcon.decoder_weight_layers`)."""
    from .scorers.gradcon import decoder_weight_layers, layer

    if not adapter.has_latent:
        raise InputError(f"--method gradcon needs the decoder: {adapter.split_reason}")
    try:
        names, _ = decoder_weight_layers(adapter)
    except ValueError as exc:
        raise InputError(f"--method gradcon: {exc}") from None
    return {f"{n}.weight": layer(adapter.module, n).weight for n in names}


def reinitialise(module: nn.Module, seed: int) -> None:
    """Fresh weights for the same architecture: every layer's own ``reset_parameters()``, seeded."""
    missing = [name or type(module).__name__ for name, m in module.named_modules()
               if any(True for _ in m.parameters(recurse=False)) and not callable(getattr(m, "reset_parameters", None))]
    if missing:
        raise InputError(f"--from-scratch: layer(s) {', '.join(missing[:4])} have no reset_parameters() (TorchScript "
                         "archives keep no initialisers); fine-tune instead, or harden the state_dict with --arch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            fn = getattr(m, "reset_parameters", None)
            if callable(fn):
                fn()


def _check(method: str, steps: int, lr: float, batch_size: int, beta: float, alpha: float, heldout_fraction: float) -> None:
    if method not in METHODS:
        raise InputError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if steps < 1:
        raise InputError(f"--steps {steps}: must be at least 1")
    if not (lr > 0 and math.isfinite(lr)):
        raise InputError(f"--lr {lr}: must be a positive number")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if not (beta >= 0 and math.isfinite(beta)):
        raise InputError(f"--beta {beta}: must be a non-negative number")
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise InputError(f"--alpha {alpha}: must be a non-negative number")
    if not 0 < heldout_fraction < 1:
        raise InputError(f"held-out fraction {heldout_fraction}: must lie strictly between 0 and 1")


def _train(adapter: AutoencoderAdapter, objective: _Objective, train_x: torch.Tensor, held: torch.Tensor, *,
           steps: int, lr: float, batch_size: int, seed: int, reporter: Reporter, method: str) -> dict[str, Any]:
    """Adam on seeded random batches; the held-out objective is evaluated ``EVALUATIONS`` times and
    the best trained state (with its GradCon reference) is kept."""
    module = adapter.module
    eval_bs = max(batch_size, 256)

    def evaluate() -> float:
        module.eval()
        value = objective.heldout(held, eval_bs)
        module.train()
        return value

    before = evaluate()
    # candidates are the trained states only: a GradCon reference exists only for those
    best, best_step, best_state, best_ref = math.inf, 0, None, None
    optimiser = torch.optim.Adam(list(module.parameters()), lr=lr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    every = max(1, steps // EVALUATIONS)
    history: list[dict[str, float]] = []
    running, since = torch.zeros((), device=train_x.device), 0
    module.train()
    with reporter.task(f"harden ({method})", total=steps) as bar:
        for step in range(1, steps + 1):
            idx = torch.randint(0, train_x.shape[0], (min(batch_size, train_x.shape[0]),), generator=gen)
            loss = objective.loss(adapter._to_model_space(train_x[idx.to(train_x.device)]))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            objective.after_backward()
            optimiser.step()
            running, since = running + loss.detach(), since + 1  # no per-step device sync
            if step % every == 0 or step == steps:
                train_loss = float(running) / since
                if not math.isfinite(train_loss):
                    raise InputError(f"harden: the training loss became {train_loss} by step {step}; lower --lr "
                                     f"(now {lr:g}) or {'--beta' if method == 'toll' else '--alpha'}")
                value = evaluate()
                history.append({"step": step, "train_loss": train_loss, "heldout": value})
                running, since = torch.zeros_like(running), 0
                if value < best:
                    best, best_step, best_state = value, step, copy.deepcopy(module.state_dict())
                    best_ref = objective.reference() if isinstance(objective, _GradCon) else None
            bar.advance(1)
    if best_state is None:
        raise InputError(f"harden: the held-out objective was never finite; lower --lr (now {lr:g})")
    return {"before": before, "best": best, "best_step": best_step, "state": best_state, "reference": best_ref,
            "history": history}


# --------------------------------------------------------------------------- entry point
def harden(model: str | Path | nn.Module | AutoencoderAdapter, data: str | Path | np.ndarray | torch.Tensor,
           method: str = "toll", *, options: LoadOptions | None = None, from_scratch: bool = False,
           steps: int = 1000, epochs: float | None = None, lr: float = 1e-3, beta: float = DEFAULT_BETA,
           alpha: float = DEFAULT_ALPHA, batch_size: int = 64, seed: int = 0, heldout_fraction: float = 0.2,
           data_key: str | None = None, device: str | None = None, reporter: Reporter | None = None) -> HardenResult:
    """Retrain ``model`` on normal ``data`` with Toll's or GradCon's loss; return the selected weights.

    ``model`` is loaded like :func:`aeaudit.scan` loads it (``options``: the model-loading flags);
    an in-memory module or adapter is copied, never changed. ``from_scratch`` re-initialises every
    layer (seeded) before training; otherwise the given weights are fine-tuned. ``steps`` Adam steps
    on random batches of ``batch_size`` (``epochs``, when given, sets ``steps`` from the training-set
    size). ``beta`` is Toll's code-norm weight, ``alpha`` GradCon's gradient-term weight. Nothing is
    written; call :meth:`HardenResult.save`.
    """
    _check(method, steps, lr, batch_size, beta, alpha, heldout_fraction)
    options = options or LoadOptions()
    if device is not None:
        options = replace(options, device=device)
    reporter = reporter or Reporter(enabled=False)
    adapter = _load(model, options)
    output_format = _output_format(adapter)
    arr = load_data(data, key=data_key, what="normal data")
    arr, shape = shape_samples(arr, options.input_shape or adapter.input_shape or None, "normal data")
    adapter.input_shape = shape
    finalize_shapes(adapter, torch.as_tensor(np.array(arr[:2]), dtype=torch.float32))
    if method == "toll" and not adapter.has_latent:
        raise InputError(f"--method toll penalises the latent code and needs the encoder/decoder split: {adapter.split_reason}")

    module = adapter.module
    if from_scratch:
        reinitialise(module, seed)
    for p in module.parameters():
        p.requires_grad_(True)
    train_idx, held_idx = split_indices(len(arr), heldout_fraction, seed)
    if epochs is not None:
        if not epochs > 0:
            raise InputError(f"--epochs {epochs}: must be positive")
        steps = max(1, math.ceil(epochs * len(train_idx) / batch_size))
    x_all = torch.as_tensor(np.array(arr), dtype=adapter.dtype)
    with torch.no_grad():
        held = adapter._to_model_space(x_all[held_idx].to(adapter.device))
    objective: _Objective = (_Toll(adapter, beta) if method == "toll"
                             else _GradCon(adapter, alpha, decoder_weights(adapter)))
    run = _train(adapter, objective, x_all[train_idx].to(adapter.device), held, steps=steps, lr=lr,
                 batch_size=batch_size, seed=seed, reporter=reporter, method=method)
    module.load_state_dict(run["state"])
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    before, best, best_step = run["before"], run["best"], run["best_step"]
    log.info("harden %s: held-out objective %.5g → %.5g (best at step %d of %d)", method, before, best, best_step, steps)
    settings = {"from_scratch": bool(from_scratch), "steps": int(steps), "lr": float(lr), "batch_size": int(batch_size),
                "seed": int(seed), "heldout_fraction": float(heldout_fraction)}
    settings.update({"beta": float(beta)} if method == "toll" else {"alpha": float(alpha)})
    source = str(model) if isinstance(model, (str, Path)) else ""
    return HardenResult(adapter=adapter, method=method, output_format=output_format, settings=settings,
                        history=run["history"], best_step=best_step, heldout_before=before, heldout_after=best,
                        reference=run["reference"], source=source,
                        source_sha256=file_sha256(Path(model)) if source else "")
