"""Command line: parse → settings → library call → render → exit code.

Exit codes (the contract with CI, :mod:`aeaudit.verdict`): 0 pass, 1 findings at or above
``--fail-on``, 2 usage or input error, 3 internal error, 4 inconclusive.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .errors import AeauditError, InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Audit trained autoencoder anomaly detectors for blind spots.",
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_PASS, EXIT_INPUT, EXIT_INTERNAL = 0, 2, 3  # the verdict's codes live in aeaudit.verdict


# Options shared by scan, harden and compare: one definition each, so their help and defaults agree.
Data = Annotated[Path, typer.Option("--data", help="Normal data: .npy, .npz, .csv/.tsv or .pt.")]
Arch = Annotated[
    str | None,
    typer.Option(help="Architecture for a state_dict: mlp:2,5,1,5,2 | file.py:factory | pkg.mod:factory."),
]
Activation = Annotated[str, typer.Option(help="Hidden activation for --arch mlp:...")]
OutputActivation = Annotated[str, typer.Option(help="Output activation for --arch mlp:...")]
TrustCheckpoint = Annotated[
    bool, typer.Option("--trust-checkpoint", help="Allow unpickling arbitrary objects (runs code from the file).")
]
Encoder = Annotated[str | None, typer.Option(help="Attribute or method of the encoder (e.g. net.enc).")]
Decoder = Annotated[str | None, typer.Option(help="Attribute or method of the decoder.")]
InputShape = Annotated[str | None, typer.Option(help="Per-sample input shape, e.g. 1,28,28.")]
DataKey = Annotated[str | None, typer.Option(help="Array name inside .npz / dict .pt data.")]
Anomalies = Annotated[Path | None, typer.Option(help="Known anomalies (evaluation only: AUROC of each score).")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
Seed = Annotated[int, typer.Option(help="Seed for every random choice.")]
Effort = Annotated[
    str, typer.Option(help="How much search: quick | standard | thorough (work, not time: the same on any machine).")
]
TimeLimit = Annotated[
    float | None,
    typer.Option(
        help="Safety cap in seconds on the checks, searches and scorer "
        "comparison; a scan it cuts short is INCONCLUSIVE (exit 4)."
    ),
]
Fpr = Annotated[float, typer.Option(help="False-positive rate that sets τ_op on held-out normal data.")]
Bounds = Annotated[str, typer.Option(help="Input domain: auto | none | LO,HI.")]
Probes = Annotated[str | None, typer.Option(help="Comma-separated probes (default: all applicable).")]
Scorers = Annotated[
    str | None,
    typer.Option(help="Comma-separated scorers compared and attacked (default: all; 'recon' for the fast gate)."),
]
ProbeSettings = Annotated[
    str,
    typer.Option(
        help="Probe settings KEY=VALUE, comma-separated; NAME.KEY for one probe, "
        "e.g. steps=400,pgd-input.starts=128 (docs/searches.md)."
    ),
]
ScorerSettings = Annotated[
    str,
    typer.Option(
        help="Scorer settings KEY=VALUE, comma-separated; NAME.KEY for one "
        "scorer, e.g. toll.beta=10,gradcon.beta=0.2 (docs/scorers.md)."
    ),
]
FailOn = Annotated[str, typer.Option(help="Gate: critical | high | warning | never.")]
Inconclusive = Annotated[
    str, typer.Option(help="Exit code of an inconclusive scan: inconclusive (4) | pass (0) | fail (1).")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")]


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"aeaudit {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Audit trained autoencoder anomaly detectors for blind spots."""


def _split(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def scan_config(params: dict[str, Any]):
    """The :class:`~aeaudit.config.ScanConfig` of a command's parameters: every parameter named like
    a scan setting or a loading option is taken, converted from its command-line form."""
    from .config import ScanConfig
    from .data import parse_shape
    from .model.loading import LoadOptions
    from .settings import parse_settings

    load = {k: params[k] for k in LoadOptions.field_names() if k in params}
    load["input_shape"] = parse_shape(load.get("input_shape"))
    values = {k: params[k] for k in ScanConfig.__dataclass_fields__ if k in params and k != "load"}
    values.update(
        {
            "load": LoadOptions(**load),
            "anomalies": str(params["anomalies"]) if params.get("anomalies") else None,
            "probe_settings": parse_settings(params.get("probe_settings", ""), "--probe-settings"),
            "scorer_settings": parse_settings(params.get("scorer_settings", ""), "--scorer-settings"),
            "command_line": shlex.join(["aeaudit", *sys.argv[1:]]),
            "config_file": str(params["config_file"]) if params.get("config_file") else "",
        }
    )
    for key in ("probes", "scorers"):  # not named: the defaults
        if params.get(key) is not None:
            values[key] = _split(params[key])
        else:
            values.pop(key, None)
    return ScanConfig(**values)


def _console() -> Console:
    """The summary's console: the terminal's width, or 120 columns in a CI log, where rich would
    otherwise assume 80 and cut numbers short."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def fail(message: str, code: int = EXIT_INPUT) -> None:
    err_console.print(f"aeaudit: error: {message}", markup=False)
    raise typer.Exit(code)


def run_guarded(fn, debug: bool = False):
    """Call ``fn`` with SIGINT/SIGTERM armed (the first asks the work to stop and keep its findings, a
    second aborts); turn aeaudit errors into one line and an exit code, anything else into exit 3."""
    from .effort import INTERRUPTS

    try:
        with INTERRUPTS.armed():
            return fn()
    except typer.Exit:
        raise
    except AeauditError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:  # an internal error: say so, no traceback unless asked
        if debug:
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", EXIT_INTERNAL)


def check_outputs(folder: Path | None = None, files: tuple[Path | None, ...] = ()) -> None:
    """Every output place must be writable before any work starts: ``folder`` a directory (or
    creatable as one), each file not a directory and in a writable (or creatable) folder."""

    def writable_dir(path: Path, what: str) -> None:
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise InputError(f"{what} {path}: {probe} is a file, not a folder; choose another path")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise InputError(f"{what} {path}: {probe} is not writable; choose a folder you can write to")

    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"--out {folder}: is a file; give a folder for the reports")
        writable_dir(folder, "--out")
    for path in files:
        if path is None:
            continue
        if path.is_dir():
            raise InputError(f"{path}: is a folder; give a file name for the report")
        writable_dir(path.parent, "report file")


def _config_callback(ctx: typer.Context, value: Path | None) -> Path | None:
    """Eager: the settings file's values become this command's defaults, so flags override them.
    The option's value becomes the file actually read (found or given)."""
    from .config_file import apply_config_file

    if ctx.resilient_parsing:
        return value
    try:
        return apply_config_file(ctx, value) or value
    except AeauditError as exc:
        fail(str(exc), exc.exit_code)


def config_option():
    return typer.Option(
        None,
        "--config",
        callback=_config_callback,
        is_eager=True,
        dir_okay=False,
        help="Settings file (default: ./aeaudit.toml, else \\[tool.aeaudit] in ./pyproject.toml); flags override it.",
    )


def write_extra_reports(report: dict, html: Path | None, junit: Path | None, markdown: Path | None) -> list[Path]:
    """Write the HTML, JUnit and Markdown forms of ``report`` that were asked for; return their paths."""
    from .report.html import write_html
    from .report.junit import write_junit
    from .report.markdown import write_markdown

    written = []
    for path, writer in ((html, write_html), (junit, write_junit), (markdown, write_markdown)):
        if path is not None:
            written.append(writer(report, path))
    return written


@app.command()
def scan(
    model: Annotated[
        Path,
        typer.Argument(help="Checkpoint: TorchScript, .pt2, state_dict (+ --arch), pickle (+ --trust-checkpoint)."),
    ],
    data: Data,
    out: Path = typer.Option(Path("aeaudit-out"), "--out", "-o", help="Folder for report.json and report.html."),
    arch: Arch = None,
    activation: Activation = "relu",
    output_activation: OutputActivation = "identity",
    trust_checkpoint: TrustCheckpoint = False,
    encoder: Encoder = None,
    decoder: Decoder = None,
    input_shape: InputShape = None,
    data_key: DataKey = None,
    anomalies: Anomalies = None,
    device: Device = "auto",
    seed: Seed = 0,
    effort: Effort = "standard",
    time_limit: TimeLimit = 600.0,
    fpr: Fpr = 0.01,
    threshold: float | None = typer.Option(None, help="Operating threshold τ_op (overrides --fpr)."),
    min_distance: float | None = typer.Option(None, help="Distance δ that counts as far (default 2·s)."),
    bounds: Bounds = "auto",
    probes: Probes = None,
    scorers: Scorers = None,
    probe_settings: ProbeSettings = "",
    scorer_settings: ScorerSettings = "",
    latent_extent: float = typer.Option(3.0, help="Latent box = normal latents' range widened this many times."),
    top_k: int = typer.Option(64, help="Findings kept with their arrays."),
    fail_on: FailOn = "high",
    inconclusive: Inconclusive = "inconclusive",
    quiet: Quiet = False,
    debug: Debug = False,
    junit: Path | None = typer.Option(None, "--junit", help="Also write JUnit XML here."),
    markdown: Path | None = typer.Option(
        None, "--markdown", help="Also write a short Markdown summary (PR comment) here."
    ),
    config_file: Path | None = config_option(),
) -> None:
    """Scan MODEL for blind spots against normal data; write report.json and report.html and exit with the gate's code."""
    params = dict(locals())
    _setup_logging(debug)

    def work() -> int:
        from .audit import scan as run_scan
        from .progress import Reporter
        from .report import write_json
        from .report.terminal import render_summary

        config = scan_config(params)
        check_outputs(out, (junit, markdown))
        result = run_scan(model, data, config, reporter=Reporter(enabled=False if quiet else None))
        report = result.to_dict()
        write_json(report, out / "report.json")
        written = write_extra_reports(report, out / "report.html", junit, markdown)
        if not quiet:
            console = _console()
            render_summary(report, console)
            console.print(f"report: {out / 'report.json'}, " + ", ".join(str(w) for w in written))
        return result.exit_code()

    raise typer.Exit(run_guarded(work, debug))


@app.command()
def harden(
    model: Annotated[Path, typer.Argument(help="Checkpoint to harden (the formats scan reads, except PyOD and .pt2).")],
    data: Data,
    method: Annotated[
        str, typer.Option("--method", help="toll (latent-norm penalty) | gradcon (gradient constraint).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the hardened checkpoint (same format family as MODEL).")
    ],
    from_scratch: bool = typer.Option(
        False, "--from-scratch", help="Re-initialise the weights (seeded) instead of fine-tuning."
    ),
    steps: int = typer.Option(1000, help="Adam steps on random batches."),
    epochs: float | None = typer.Option(None, help="Set --steps from passes over the training split instead."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    batch_size: int = typer.Option(64, help="Batch size."),
    beta: float = typer.Option(10.0, help="Toll: weight β of the latent-norm term (also used by the toll score)."),
    alpha: float = typer.Option(0.03, help="GradCon: weight α of the gradient-alignment term."),
    arch: Arch = None,
    activation: Activation = "relu",
    output_activation: OutputActivation = "identity",
    trust_checkpoint: TrustCheckpoint = False,
    encoder: Encoder = None,
    decoder: Decoder = None,
    input_shape: InputShape = None,
    data_key: DataKey = None,
    device: Device = "auto",
    seed: int = typer.Option(0, help="Seed for the split, the batches and --from-scratch weights."),
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Retrain MODEL with Toll's or GradCon's loss on normal data; write a checkpoint `aeaudit scan` loads."""
    params = dict(locals())
    _setup_logging(debug)

    def work() -> int:
        from .data import parse_shape
        from .harden import HardenSettings
        from .harden import harden as run_harden
        from .model.loading import LoadOptions
        from .progress import Reporter

        load = {k: params[k] for k in LoadOptions.field_names()}
        load["input_shape"] = parse_shape(load["input_shape"])
        settings = HardenSettings(
            load=LoadOptions(**load),
            **{k: params[k] for k in HardenSettings.__dataclass_fields__ if k in params and k != "load"},
        )
        check_outputs(files=(out,))
        result = run_harden(model, data, settings, reporter=Reporter(enabled=False if quiet else None))
        path = result.save(out)
        if not quiet:
            console = _console()
            knob = ", ".join(f"{k} {v:g}" for k, v in settings.method_parameters().items())
            console.print(
                f"hardened with {method} ({knob}, {'from scratch' if from_scratch else 'fine-tuned'}, "
                f"{result.settings.steps} steps): selection objective {result.heldout_before:.4g} → "
                f"{result.heldout_after:.4g} (selected step {result.best_step})"
            )
            hint = f" --arch {arch}" if result.output_format == "state_dict" and arch else ""
            hint += " --trust-checkpoint" if result.output_format == "pickle" else ""
            console.print(
                f"wrote {path} ({result.output_format}); audit it with: aeaudit scan {path}{hint} --data {data}"
            )
        return EXIT_PASS

    raise typer.Exit(run_guarded(work, debug))


@app.command()
def compare(
    model: Annotated[Path, typer.Argument(help="The original checkpoint.")],
    hardened: Annotated[Path, typer.Argument(help="The hardened checkpoint (from aeaudit harden).")],
    data: Data,
    out: Path = typer.Option(Path("aeaudit-compare"), "--out", "-o", help="Folder for compare.json and both reports."),
    arch: Arch = None,
    activation: Activation = "relu",
    output_activation: OutputActivation = "identity",
    trust_checkpoint: TrustCheckpoint = False,
    encoder: Encoder = None,
    decoder: Decoder = None,
    input_shape: InputShape = None,
    data_key: DataKey = None,
    anomalies: Anomalies = None,
    device: Device = "auto",
    seed: Seed = 0,
    effort: Effort = "standard",
    time_limit: TimeLimit = 600.0,
    fpr: Fpr = 0.01,
    bounds: Bounds = "auto",
    probes: Probes = None,
    scorers: Scorers = None,
    probe_settings: ProbeSettings = "",
    scorer_settings: ScorerSettings = "",
    fail_on: FailOn = "high",
    inconclusive: Inconclusive = "inconclusive",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Audit MODEL and HARDENED side by side; exit 1 when the hardened model still fails the gate."""
    params = dict(locals())
    _setup_logging(debug)

    def work() -> int:
        from .compare import compare as run_compare
        from .compare import compare_json, validate_pair
        from .progress import Reporter
        from .report import write_json
        from .report.compare_terminal import render_compare

        validate_pair(model, hardened)
        config = scan_config(params)
        check_outputs(out)
        result = run_compare(model, hardened, data, config, reporter=Reporter(enabled=False if quiet else None))
        for name, audit in result["results"].items():
            report = audit.to_dict()
            write_json(report, out / name / "report.json")
            write_extra_reports(report, out / name / "report.html", None, None)
        write_json(compare_json(result), out / "compare.json")
        if not quiet:
            console = _console()
            render_compare(result, console)
            console.print(f"compare: {out / 'compare.json'} (full audits in {out / 'original'} and {out / 'hardened'})")
        return result["exit_code"]

    raise typer.Exit(run_guarded(work, debug))


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="A report.json written by `aeaudit scan`.")],
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="Where to write the HTML report."),
    junit: Path | None = typer.Option(None, "--junit", help="Also write JUnit XML here."),
    markdown: Path | None = typer.Option(None, "--markdown", help="Also write a Markdown summary here."),
    debug: Debug = False,
) -> None:
    """Re-render the HTML (and optionally JUnit / Markdown) report from a saved report.json.

    Exits 0 once written (the gate is `aeaudit scan`'s job; its code is in report.json under gate.exit_code)."""

    def work() -> int:
        from .report.json_report import load_report

        check_outputs(files=(out, junit, markdown))
        saved = load_report(results)
        try:
            written = write_extra_reports(saved, out, junit, markdown)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise InputError(
                f"{results}: a malformed report.json ({type(exc).__name__}: {exc}); "
                "give the report.json that `aeaudit scan` wrote"
            ) from None
        for path in written:
            typer.echo(f"wrote {path}")
        return EXIT_PASS

    raise typer.Exit(run_guarded(work, debug))


def main() -> None:
    app(prog_name="aeaudit")


if __name__ == "__main__":
    main()
