"""Hardening: retrain an autoencoder with a remedy from the papers, so that it can be re-audited.

The remedies are the scorers that also train (``HARDENING_METHODS``: Toll and GradCon); each keeps
its training objective and the checkpoint keys its score reads in its own module
(:mod:`aeaudit.scorers.toll`, :mod:`aeaudit.scorers.gradcon`), and this module only runs the
training loop, on the same architecture (fine-tuned, or retrained from fresh weights).

Model selection uses normal data only, and never the part an audit calibrates on: the data is split
with the audit's own seeded split (reference / held-out), training uses the reference part alone,
and a *selection* part carved out of it (seeded) picks the weights with the lowest selection loss.
So ``aeaudit scan --seed N`` on the hardened model calibrates τ_op on data the hardening never saw.

The result is written in the input's format family so that ``aeaudit scan`` loads it the same
way (see :meth:`HardenResult.save` and docs/hardening.md).
"""

from __future__ import annotations

import copy
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .baseline import split_indices
from .data import load_data
from .errors import InputError
from .model.adapter import AutoencoderAdapter
from .model.formats import TORCHSCRIPT_EXTRAS
from .model.layout import unwrap_layout
from .model.loading import LoadOptions, file_sha256, open_model
from .progress import Reporter
from .report.atomic import atomic_path
from .scorers import HARDENING_METHODS, SCORERS, TrainingObjective

log = logging.getLogger(__name__)

META_KEY = "aeaudit"
EVALUATIONS = 50  # selection evaluations per run
SELECTION_SALT = 7_919  # seeds the selection split apart from the audit's own split


@dataclass(frozen=True)
class HardenSettings:
    """Every setting of ``aeaudit harden`` (checked on construction: bad values are an InputError).

    ``beta``: Toll's code-norm weight (its value for Arrhythmia and CIFAR-10; its MNIST runs used
    1000 on standardised pixels); ``alpha``: GradCon's weight of the gradient term.
    ``heldout_fraction``: the audit's held-out share, left untouched; ``selection_fraction``: the
    share of the remaining reference part used for model selection."""

    method: str = "toll"
    load: LoadOptions = field(default_factory=LoadOptions)
    from_scratch: bool = False
    steps: int = 1000
    epochs: float | None = None
    lr: float = 1e-3
    batch_size: int = 64
    beta: float = 10.0
    alpha: float = 0.03
    seed: int = 0
    heldout_fraction: float = 0.2
    selection_fraction: float = 0.2
    data_key: str | None = None

    def __post_init__(self) -> None:
        if self.method not in HARDENING_METHODS:
            raise InputError(f"--method {self.method!r}: choose one of {', '.join(HARDENING_METHODS)}")
        checks = [
            (isinstance(self.steps, int) and self.steps >= 1, f"--steps {self.steps!r}: must be at least 1"),
            (_positive(self.lr), f"--lr {self.lr!r}: must be a positive number"),
            (
                isinstance(self.batch_size, int) and self.batch_size >= 1,
                f"--batch-size {self.batch_size!r}: must be at least 1",
            ),
            (_positive(self.beta, zero=True), f"--beta {self.beta!r}: must be a non-negative number"),
            (_positive(self.alpha, zero=True), f"--alpha {self.alpha!r}: must be a non-negative number"),
            (self.epochs is None or _positive(self.epochs), f"--epochs {self.epochs!r}: must be positive"),
            (isinstance(self.seed, int) and self.seed >= 0, f"--seed {self.seed!r}: must be an integer ≥ 0"),
        ]
        for fraction, name in ((self.heldout_fraction, "held-out"), (self.selection_fraction, "selection")):
            checks.append(
                (
                    _positive(fraction) and fraction < 1,
                    f"{name} fraction {fraction!r}: must lie strictly between 0 and 1",
                )
            )
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def method_parameters(self) -> dict[str, Any]:
        """The settings the method's training objective takes (Toll: ``beta``; GradCon: ``alpha``)."""
        return {name: getattr(self, name) for name in SCORERS[self.method].training_parameters}


def _positive(value: Any, zero: bool = False) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (value >= 0 if zero else value > 0)


@dataclass
class HardenResult:
    """The hardened model and how it was selected.

    ``adapter``: the selected weights, in eval mode (ready for :func:`aeaudit.scan`).
    ``history``: one row per selection evaluation: ``step``, ``train_loss`` (mean since the last
    evaluation) and ``heldout`` (the selection loss on the selection part of the normal data).
    ``extras``: the checkpoint keys the method's score reads (``toll_beta``, ``gradcon_reference``).
    """

    adapter: AutoencoderAdapter
    settings: HardenSettings
    output_format: str
    history: list[dict[str, float]]
    best_step: int
    heldout_before: float
    heldout_after: float
    selection: str
    extras: dict[str, Any]
    source: str = ""
    source_sha256: str = ""

    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def module(self) -> nn.Module:
        return self.adapter.module

    def metadata(self) -> dict[str, Any]:
        """What the checkpoint records under ``"aeaudit"`` (plain types: loads with weights_only)."""
        s = self.settings
        return {
            "method": s.method,
            "from_scratch": bool(s.from_scratch),
            "steps": int(s.steps),
            "lr": float(s.lr),
            "batch_size": int(s.batch_size),
            "seed": int(s.seed),
            "heldout_fraction": float(s.heldout_fraction),
            "selection_fraction": float(s.selection_fraction),
            **s.method_parameters(),
            "best_step": self.best_step,
            "selection": self.selection,
            "heldout_objective_before": self.heldout_before,
            "heldout_objective_after": self.heldout_after,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "version": __version__,
        }

    def checkpoint_extras(self) -> dict[str, Any]:
        return {META_KEY: self.metadata(), **self.extras}

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


# --------------------------------------------------------------------------- helpers
def _output_format(adapter: AutoencoderAdapter) -> str:
    fmt = adapter.card.format
    if adapter.loss_kind == "pyod" or fmt.startswith("pyod"):
        raise InputError(
            "harden cannot write a PyOD detector back; save its .model's state_dict and harden that with --arch"
        )
    if fmt == "torch.export":
        raise InputError(
            "harden cannot retrain a torch.export (.pt2) program; harden the TorchScript or state_dict "
            "version of the model, then export the result"
        )
    if fmt == "torchscript":
        return "torchscript"
    if fmt.startswith("pickle"):
        return "pickle"
    return "state_dict"


def reinitialise(module: nn.Module, seed: int) -> None:
    """Fresh weights for the same architecture: every layer's own ``reset_parameters()``, seeded."""
    missing = [
        name or type(module).__name__
        for name, m in module.named_modules()
        if any(True for _ in m.parameters(recurse=False)) and not callable(getattr(m, "reset_parameters", None))
    ]
    if missing:
        raise InputError(
            f"--from-scratch: layer(s) {', '.join(missing[:4])} have no reset_parameters() (TorchScript "
            "archives keep no initialisers); fine-tune instead, or harden the state_dict with --arch"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            fn = getattr(m, "reset_parameters", None)
            if callable(fn):
                fn()


def selection_split(n: int, settings: HardenSettings) -> tuple[np.ndarray, np.ndarray]:
    """``(training rows, selection rows)``: both inside the audit's reference part for the same seed."""
    reference, _ = split_indices(n, settings.heldout_fraction, settings.seed)
    fit, select = split_indices(len(reference), settings.selection_fraction, settings.seed + SELECTION_SALT)
    return reference[fit], reference[select]


def _train(
    adapter: AutoencoderAdapter,
    objective: TrainingObjective,
    train_x: torch.Tensor,
    held: torch.Tensor,
    settings: HardenSettings,
    steps: int,
    reporter: Reporter,
) -> dict[str, Any]:
    """Adam on seeded random batches; the selection objective is evaluated ``EVALUATIONS`` times and
    the best trained state (with the method's snapshot, e.g. GradCon's reference) is kept."""
    module = adapter.module
    eval_bs = max(settings.batch_size, 256)

    def evaluate() -> float:
        module.eval()
        value = objective.heldout(held, eval_bs)
        module.train()
        return value

    before = evaluate()
    # candidates are the trained states only: a GradCon reference exists only for those
    best, best_step, best_state, best_snapshot = math.inf, 0, None, None
    optimiser = torch.optim.Adam(list(module.parameters()), lr=settings.lr)
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    every = max(1, steps // EVALUATIONS)
    history: list[dict[str, float]] = []
    running, since = torch.zeros((), device=train_x.device), 0
    module.train()
    with reporter.task(f"harden ({settings.method})", total=steps) as bar:
        for step in range(1, steps + 1):
            idx = torch.randint(0, train_x.shape[0], (min(settings.batch_size, train_x.shape[0]),), generator=gen)
            loss = objective.loss(adapter.to_model_space(train_x[idx.to(train_x.device)]))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            objective.after_backward()
            optimiser.step()
            running, since = running + loss.detach(), since + 1  # no per-step device sync
            if step % every == 0 or step == steps:
                train_loss = float(running) / since
                if not math.isfinite(train_loss):
                    knob = ", ".join(f"--{k}" for k in settings.method_parameters())
                    raise InputError(
                        f"harden: the training loss became {train_loss} by step {step}; lower --lr "
                        f"(now {settings.lr:g}) or {knob}"
                    )
                value = evaluate()
                history.append({"step": step, "train_loss": train_loss, "heldout": value})
                running, since = torch.zeros_like(running), 0
                if value < best:
                    best, best_step, best_state = value, step, copy.deepcopy(module.state_dict())
                    best_snapshot = objective.snapshot()
            bar.advance(1)
    if best_state is None:
        raise InputError(f"harden: the selection objective was never finite; lower --lr (now {settings.lr:g})")
    return {
        "before": before,
        "best": best,
        "best_step": best_step,
        "state": best_state,
        "snapshot": best_snapshot,
        "history": history,
    }


# --------------------------------------------------------------------------- entry point
def harden(
    model: str | Path | nn.Module | AutoencoderAdapter,
    data: str | Path | np.ndarray | torch.Tensor,
    settings: HardenSettings | None = None,
    *,
    reporter: Reporter | None = None,
    **overrides: Any,
) -> HardenResult:
    """Retrain ``model`` on normal ``data`` with a method's training objective; return the selected weights.

    ``model`` is loaded like :func:`aeaudit.scan` loads it (``settings.load``: the model-loading
    options); an in-memory module or adapter is copied, never changed. Settings come from
    ``settings`` and/or keyword overrides of :class:`HardenSettings` fields (and loading options by
    name, e.g. ``arch=``). Nothing is written; call :meth:`HardenResult.save`.
    """
    settings = _settings(settings, overrides)
    reporter = reporter or Reporter(enabled=False)
    if isinstance(model, AutoencoderAdapter):
        model = model.to()  # a copy: the caller's model is left untouched
    elif isinstance(model, nn.Module):
        model = copy.deepcopy(model)
    arr = load_data(data, key=settings.data_key, what="normal data")
    adapter, arr = open_model(model, arr, settings.load)
    output_format = _output_format(adapter)
    objective = SCORERS[settings.method].training_objective(adapter, **settings.method_parameters())
    module = adapter.module
    if settings.from_scratch:
        reinitialise(module, settings.seed)
    for p in module.parameters():
        p.requires_grad_(True)
    train_idx, select_idx = selection_split(len(arr), settings)
    steps = settings.steps
    if settings.epochs is not None:
        steps = max(1, math.ceil(settings.epochs * len(train_idx) / settings.batch_size))
    x_all = torch.as_tensor(np.array(arr), dtype=adapter.dtype)
    with torch.no_grad():
        held = adapter.to_model_space(x_all[select_idx].to(adapter.device))
    run = _train(adapter, objective, x_all[train_idx].to(adapter.device), held, settings, steps, reporter)
    module.load_state_dict(run["state"])
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    log.info(
        "harden %s: selection objective %.5g → %.5g (best at step %d of %d)",
        settings.method,
        run["before"],
        run["best"],
        run["best_step"],
        steps,
    )
    source = str(model) if isinstance(model, (str, Path)) else ""
    return HardenResult(
        adapter=adapter,
        settings=_with_steps(settings, steps),
        output_format=output_format,
        history=run["history"],
        best_step=run["best_step"],
        heldout_before=run["before"],
        heldout_after=run["best"],
        selection=objective.selection,
        extras=objective.checkpoint_extras(run["snapshot"]),
        source=source,
        source_sha256=file_sha256(Path(model)) if source else "",
    )


def _settings(settings: HardenSettings | None, overrides: dict[str, Any]) -> HardenSettings:
    settings = settings or HardenSettings()
    if not overrides:
        return settings
    own = set(HardenSettings.__dataclass_fields__)
    load_names = LoadOptions.field_names()
    unknown = sorted(set(overrides) - own - load_names)
    if unknown:
        raise InputError(f"unknown harden setting(s): {', '.join(unknown)}")
    load = {k: v for k, v in overrides.items() if k in load_names}
    values = {**settings.__dict__, **{k: v for k, v in overrides.items() if k in own}}
    values["load"] = LoadOptions(**{**settings.load.__dict__, **load})
    return HardenSettings(**values)


def _with_steps(settings: HardenSettings, steps: int) -> HardenSettings:
    return HardenSettings(**{**settings.__dict__, "steps": steps, "epochs": None})
