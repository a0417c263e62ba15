"""Scan settings: one frozen object shared by the CLI, the settings file and the Python API.

Every setting is checked here, before any work: a NaN threshold, a negative distance or an
unknown probe is an :class:`~aeaudit.errors.InputError` (exit 2) whichever way it arrived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .effort import DEFAULT_EFFORT, EFFORTS
from .errors import InputError
from .model.loading import LoadOptions
from .probes import DEFAULT_PROBES, PROBES, make_probe
from .scorers import DEFAULT_SCORERS, SCORERS, make_scorer
from .settings import check_settings
from .verdict import GATES, INCONCLUSIVE_AS

DEFAULT_TIME_LIMIT = 600.0
ADAPTIVE_PROBES_KEY = "adaptive_probes"  # a scorer setting read by the gap comparison


def _finite(value: Any, flag: str, *, low: float | None = None, strict: bool = True, high: float | None = None) -> None:
    """``value`` must be a finite number (above ``low``; ``strict``: ``>``, else ``≥``; below ``high``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value < high
    if not ok:
        bound = (
            "" if low is None else f" {'>' if strict else '≥'} {low:g}" + ("" if high is None else f" and < {high:g}")
        )
        raise InputError(f"{flag} {value!r}: must be a finite number{bound}")


@dataclass(frozen=True)
class ScanConfig:
    """Every setting of a scan. ``load`` holds the model-loading options (also settable by their own
    names through :meth:`with_overrides`, e.g. ``arch=``)."""

    load: LoadOptions = field(default_factory=LoadOptions)
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
    effort: str = DEFAULT_EFFORT
    time_limit: float | None = DEFAULT_TIME_LIMIT
    probes: tuple[str, ...] = DEFAULT_PROBES
    scorers: tuple[str, ...] = DEFAULT_SCORERS
    latent_extent: float = 3.0
    top_k: int = 64
    probe_settings: dict[str, Any] = field(default_factory=dict)
    scorer_settings: dict[str, Any] = field(default_factory=dict)
    # gate and output
    fail_on: str = "high"
    inconclusive: str = "inconclusive"
    quiet: bool = False
    command_line: str = ""
    config_file: str = ""  # the settings file the CLI read, if any

    def __post_init__(self) -> None:
        if self.fail_on not in GATES:
            raise InputError(f"--fail-on {self.fail_on!r}: choose one of {', '.join(GATES)}")
        if self.inconclusive not in INCONCLUSIVE_AS:
            raise InputError(f"--inconclusive {self.inconclusive!r}: choose one of {', '.join(INCONCLUSIVE_AS)}")
        if self.effort not in EFFORTS:
            raise InputError(f"--effort {self.effort!r}: choose one of {', '.join(EFFORTS)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise InputError(f"--seed {self.seed!r}: must be an integer ≥ 0")
        _finite(self.heldout_fraction, "held-out fraction", low=0, high=1)
        _finite(self.fpr, "--fpr", low=0, high=1)
        if self.threshold is not None:
            _finite(self.threshold, "--threshold", low=0, strict=False)
        if self.min_distance is not None:
            _finite(self.min_distance, "--min-distance", low=0)
        if self.time_limit is not None:
            _finite(self.time_limit, "--time-limit", low=0)
        _finite(self.latent_extent, "--latent-extent", low=0)
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise InputError(f"--top-k {self.top_k!r}: must be an integer ≥ 1")
        for flag, what, names, registry in (
            ("--probes", "probe", self.probes, PROBES),
            ("--scorers", "scorer", self.scorers, SCORERS),
        ):
            unknown = [n for n in names if n not in registry]
            if unknown:
                raise InputError(
                    f"{flag}: unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(registry)}"
                )
        check_settings(self.probe_settings, PROBES, "--probe-settings")
        check_settings(self.scorer_settings, SCORERS, "--scorer-settings", extra=(ADAPTIVE_PROBES_KEY,))
        for name in self.probes:  # settings out of range fail now, not halfway through the scan
            self.probe(name)
        for name in self.scorers:
            make_scorer(name, self.scorer_settings)

    def probe(self, name: str):
        """The probe ``name`` with this scan's effort and settings."""
        return make_probe(name, {"latent_extent": self.latent_extent, **self.probe_settings}, self.effort)

    def with_overrides(self, **overrides: Any) -> ScanConfig:
        """A copy with fields replaced; model-loading options may be given by name (``arch=``, ``device=``)."""
        own = {f.name for f in fields(self)}
        load_names = LoadOptions.field_names()
        unknown = sorted(set(overrides) - own - load_names)
        if unknown:
            raise InputError(f"unknown scan setting(s): {', '.join(unknown)}")
        load = {k: v for k, v in overrides.items() if k in load_names and k not in own}
        rest = {k: v for k, v in overrides.items() if k in own}
        if load:
            rest["load"] = replace(rest.get("load", self.load), **load)
        return replace(self, **rest)

    def to_dict(self) -> dict[str, Any]:
        """Flat settings for report.json (the loading options beside the others)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "load":
                out.update({k: list(v) if isinstance(v, tuple) else v for k, v in value.__dict__.items()})
            else:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def scan_config(config: ScanConfig | None = None, **overrides: Any) -> ScanConfig:
    """``config`` (or the defaults) with keyword overrides, as the Python API takes them."""
    config = config or ScanConfig()
    return config.with_overrides(**overrides) if overrides else config
