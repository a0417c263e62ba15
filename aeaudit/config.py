"""Scan settings: one frozen object built by the CLI (or by hand) and passed to :func:`aeaudit.scan`."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import InputError
from .model.loading import LoadOptions
from .probes import DEFAULT_PROBES, PROBES
from .scorers import DEFAULT_SCORERS, SCORERS
from .settings import check_settings

FAIL_ON = ("critical", "high", "never")


@dataclass(frozen=True)
class ScanConfig:
    # model loading
    arch: str | None = None
    activation: str = "relu"
    output_activation: str = "identity"
    trust_checkpoint: bool = False
    encoder: str | None = None
    decoder: str | None = None
    input_shape: tuple[int, ...] | None = None
    device: str = "auto"
    # data
    data_key: str | None = None
    anomalies: str | None = None
    anomalies_key: str | None = None
    # baseline
    seed: int = 0
    heldout_fraction: float = 0.2
    fpr: float = 0.01
    threshold: float | None = None
    min_distance: float | None = None
    bounds: str = "auto"
    # work
    budget: float | None = 60.0
    probes: tuple[str, ...] = DEFAULT_PROBES
    scorers: tuple[str, ...] = DEFAULT_SCORERS
    latent_extent: float = 3.0
    top_k: int = 64
    probe_settings: dict[str, Any] = field(default_factory=dict)
    scorer_settings: dict[str, Any] = field(default_factory=dict)
    # gate and output
    fail_on: str = "high"
    quiet: bool = False
    command_line: str = ""
    config_file: str = ""  # the settings file the CLI read, if any

    def __post_init__(self) -> None:
        if self.fail_on not in FAIL_ON:
            raise InputError(f"--fail-on {self.fail_on!r}: choose one of {', '.join(FAIL_ON)}")
        if not 0 < self.heldout_fraction < 1:
            raise InputError(f"held-out fraction {self.heldout_fraction}: must lie strictly between 0 and 1")
        if self.budget is not None and self.budget <= 0:
            raise InputError(f"--budget {self.budget}: must be a positive number of seconds")
        if self.top_k < 1:
            raise InputError(f"--top-k {self.top_k}: must be at least 1")
        check_settings(self.probe_settings, PROBES, "--probe-settings")
        check_settings(self.scorer_settings, SCORERS, "--scorer-settings", extra=("adaptive_probes",))

    def load_options(self) -> LoadOptions:
        return LoadOptions(arch=self.arch, activation=self.activation, output_activation=self.output_activation,
                           trust_checkpoint=self.trust_checkpoint, encoder=self.encoder, decoder=self.decoder,
                           input_shape=self.input_shape, device=self.device)

    def probe_options(self) -> dict[str, Any]:
        """Settings handed to every probe's constructor (each takes the ones it knows)."""
        return {"latent_extent": self.latent_extent, **self.probe_settings}

    def with_overrides(self, **overrides: Any) -> "ScanConfig":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"unknown scan setting(s): {', '.join(unknown)}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}
