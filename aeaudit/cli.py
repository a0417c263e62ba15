"""Command line: parse → settings → library call → render → exit code.

Exit codes (the contract with CI): 0 pass, 1 findings at or above ``--fail-on``,
2 usage or input error, 3 internal error.
"""
from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from .errors import AeauditError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit trained autoencoder anomaly detectors for blind spots.")
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_PASS, EXIT_FINDINGS, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


# Options shared by scan, harden and compare: one definition each, so their help and defaults agree.
Data = Annotated[Path, typer.Option("--data", help="Normal data: .npy, .npz, .csv/.tsv or .pt.")]
Arch = Annotated[Optional[str], typer.Option(help="Architecture for a state_dict: mlp:2,5,1,5,2 | file.py:factory | pkg.mod:factory.")]
Activation = Annotated[str, typer.Option(help="Hidden activation for --arch mlp:...")]
OutputActivation = Annotated[str, typer.Option(help="Output activation for --arch mlp:...")]
TrustCheckpoint = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow unpickling arbitrary objects (runs code from the file).")]
Encoder = Annotated[Optional[str], typer.Option(help="Attribute or method of the encoder (e.g. net.enc).")]
Decoder = Annotated[Optional[str], typer.Option(help="Attribute or method of the decoder.")]
InputShape = Annotated[Optional[str], typer.Option(help="Per-sample input shape, e.g. 1,28,28.")]
DataKey = Annotated[Optional[str], typer.Option(help="Array name inside .npz / dict .pt data.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
Seed = Annotated[int, typer.Option(help="Seed for every random choice.")]
Bounds = Annotated[str, typer.Option(help="Input domain: auto | none | LO,HI.")]
Probes = Annotated[Optional[str], typer.Option(help="Comma-separated probes (default: all applicable).")]
ProbeSettings = Annotated[str, typer.Option(help="Probe settings KEY=VALUE, comma-separated; NAME.KEY for one probe, "
                                                 "e.g. steps=400,pgd-input.starts=128 (docs/searches.md).")]
ScorerSettings = Annotated[str, typer.Option(help="Scorer settings KEY=VALUE, comma-separated; NAME.KEY for one "
                                                  "scorer, e.g. toll.beta=10,gradcon.beta=0.2 (docs/scorers.md).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")]


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"aeaudit {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    """Audit trained autoencoder anomaly detectors for blind spots."""


def _split(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _selection(probes: Optional[str], scorers: Optional[str], probe_settings: str, scorer_settings: str) -> dict[str, Any]:
    """The probes and scorers named on the command line (those not named keep ScanConfig's
    defaults) and their settings."""
    from .settings import parse_settings

    chosen = {"probes": probes, "scorers": scorers}
    return {**{key: _split(text) for key, text in chosen.items() if text is not None},
            "probe_settings": parse_settings(probe_settings, "--probe-settings"),
            "scorer_settings": parse_settings(scorer_settings, "--scorer-settings")}


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
    """Call ``fn``; turn aeaudit errors into one line and an exit code, anything else into exit 3."""
    try:
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


def _config_callback(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
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
    return typer.Option(None, "--config", callback=_config_callback, is_eager=True, dir_okay=False,
                        help="Settings file (default: ./aeaudit.toml, else \\[tool.aeaudit] in ./pyproject.toml); flags override it.")


def write_extra_reports(report: dict, html: Optional[Path], junit: Optional[Path], markdown: Optional[Path]) -> list[Path]:
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
    model: Annotated[Path, typer.Argument(help="Checkpoint: TorchScript, .pt2, state_dict (+ --arch), pickle (+ --trust-checkpoint).")],
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
    anomalies: Optional[Path] = typer.Option(None, help="Known anomalies (evaluation only)."),
    device: Device = "auto",
    seed: Seed = 0,
    budget: float = typer.Option(60.0, help="Time budget in seconds for the searches."),
    fpr: float = typer.Option(0.01, help="False-positive rate that sets τ_op on held-out normal data."),
    threshold: Optional[float] = typer.Option(None, help="Operating threshold τ_op (overrides --fpr)."),
    min_distance: Optional[float] = typer.Option(None, help="Distance δ that counts as far (default 2·s)."),
    bounds: Bounds = "auto",
    probes: Probes = None,
    scorers: Optional[str] = typer.Option(None, help="Comma-separated scorers to compare."),
    probe_settings: ProbeSettings = "",
    scorer_settings: ScorerSettings = "",
    latent_extent: float = typer.Option(3.0, help="Latent box = normal latents' range widened this many times."),
    top_k: int = typer.Option(64, help="Findings kept with their arrays."),
    fail_on: str = typer.Option("high", help="Gate: critical | high | never."),
    quiet: Quiet = False,
    debug: Debug = False,
    junit: Optional[Path] = typer.Option(None, "--junit", help="Also write JUnit XML (one test case per check) here."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write a short Markdown summary (PR comment) here."),
    config_file: Optional[Path] = config_option(),
) -> None:
    """Scan MODEL for blind spots against normal data; write report.json and report.html and exit with the gate's code."""
    from .audit import scan as run_scan
    from .config import ScanConfig
    from .data import parse_shape
    from .progress import Reporter
    from .report import write_json
    from .report.terminal import render_summary

    _setup_logging(debug)

    def work() -> int:
        config = ScanConfig(
            arch=arch, activation=activation, output_activation=output_activation, trust_checkpoint=trust_checkpoint,
            encoder=encoder, decoder=decoder, input_shape=parse_shape(input_shape), device=device,
            data_key=data_key, anomalies=str(anomalies) if anomalies else None, seed=seed, fpr=fpr,
            threshold=threshold, min_distance=min_distance, bounds=bounds, budget=budget, latent_extent=latent_extent,
            top_k=top_k, fail_on=fail_on, quiet=quiet, command_line=shlex.join(["aeaudit", *sys.argv[1:]]),
            config_file=str(config_file) if config_file else "",
            **_selection(probes, scorers, probe_settings, scorer_settings),
        )
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
    method: Annotated[str, typer.Option("--method", help="toll (latent-norm penalty) | gradcon (gradient constraint).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the hardened checkpoint (same format family as MODEL).")],
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Re-initialise the weights (seeded) instead of fine-tuning."),
    steps: int = typer.Option(1000, help="Adam steps on random batches."),
    epochs: Optional[float] = typer.Option(None, help="Set --steps from passes over the training split instead."),
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
    from .data import parse_shape
    from .harden import harden as run_harden
    from .model.loading import LoadOptions
    from .progress import Reporter

    _setup_logging(debug)

    def work() -> int:
        options = LoadOptions(arch=arch, activation=activation, output_activation=output_activation,
                              trust_checkpoint=trust_checkpoint, encoder=encoder, decoder=decoder,
                              input_shape=parse_shape(input_shape), device=device)
        result = run_harden(model, data, method, options=options, from_scratch=from_scratch, steps=steps, epochs=epochs,
                            lr=lr, beta=beta, alpha=alpha, batch_size=batch_size, seed=seed, data_key=data_key,
                            reporter=Reporter(enabled=False if quiet else None))
        path = result.save(out)
        if not quiet:
            console = _console()
            knob = f"β {beta:g}" if method == "toll" else f"α {alpha:g}"
            console.print(f"hardened with {method} ({knob}, {'from scratch' if from_scratch else 'fine-tuned'}, "
                          f"{result.settings['steps']} steps): held-out objective {result.heldout_before:.4g} → "
                          f"{result.heldout_after:.4g} (selected step {result.best_step})")
            hint = f" --arch {arch}" if result.output_format == "state_dict" and arch else ""
            hint += " --trust-checkpoint" if result.output_format == "pickle" else ""
            console.print(f"wrote {path} ({result.output_format}); audit it with: aeaudit scan {path}{hint} --data {data}")
        return EXIT_PASS

    raise typer.Exit(run_guarded(work, debug))


@app.command()
def compare(
    model: Annotated[Path, typer.Argument(help="The original checkpoint.")],
    hardened: Annotated[Path, typer.Argument(help="The hardened checkpoint (from aeaudit harden).")],
    data: Data,
    out: Path = typer.Option(Path("aeaudit-compare"), "--out", "-o", help="Folder for compare.json and both reports."),
    budget: float = typer.Option(60.0, help="Time budget in seconds for each model's searches."),
    arch: Optional[str] = typer.Option(None, help="Architecture for state_dicts (both models): mlp:... | file.py:factory | pkg.mod:factory."),
    activation: Activation = "relu",
    output_activation: OutputActivation = "identity",
    trust_checkpoint: TrustCheckpoint = False,
    encoder: Encoder = None,
    decoder: Decoder = None,
    input_shape: InputShape = None,
    data_key: DataKey = None,
    anomalies: Optional[Path] = typer.Option(None, help="Known anomalies (evaluation only): AUROC of each score, both models."),
    device: Device = "auto",
    seed: Seed = 0,
    fpr: float = typer.Option(0.01, help="False-positive rate that sets each model's τ_op on held-out normal data."),
    bounds: Bounds = "auto",
    probes: Probes = None,
    scorers: Optional[str] = typer.Option(None, help="Comma-separated scorers (the hardened model's own score is added)."),
    probe_settings: ProbeSettings = "",
    scorer_settings: ScorerSettings = "",
    fail_on: str = typer.Option("high", help="Gate on the hardened model: critical | high | never."),
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Audit MODEL and HARDENED side by side; exit 1 when the hardened model still fails the gate."""
    from .compare import compare as run_compare
    from .compare import compare_json, render_compare, validate_pair
    from .config import ScanConfig
    from .data import parse_shape
    from .progress import Reporter
    from .report import write_json

    _setup_logging(debug)

    def work() -> int:
        validate_pair(model, hardened)
        config = ScanConfig(
            arch=arch, activation=activation, output_activation=output_activation, trust_checkpoint=trust_checkpoint,
            encoder=encoder, decoder=decoder, input_shape=parse_shape(input_shape), device=device, data_key=data_key,
            anomalies=str(anomalies) if anomalies else None, seed=seed, fpr=fpr, bounds=bounds, budget=budget,
            fail_on=fail_on, quiet=quiet,
            command_line=shlex.join(["aeaudit", *sys.argv[1:]]), **_selection(probes, scorers, probe_settings, scorer_settings),
        )
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
    junit: Optional[Path] = typer.Option(None, "--junit", help="Also write JUnit XML here."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write a Markdown summary here."),
    debug: Debug = False,
) -> None:
    """Re-render the HTML (and optionally JUnit / Markdown) report from a saved report.json.

    Exits 0 once written (the gate is `aeaudit scan`'s job; its code is in report.json under gate.exit_code)."""
    from .report.json_report import load_report

    def work() -> int:
        saved = load_report(results)
        for path in write_extra_reports(saved, out, junit, markdown):
            typer.echo(f"wrote {path}")
        return EXIT_PASS

    raise typer.Exit(run_guarded(work, debug))


def main() -> None:
    app(prog_name="aeaudit")


if __name__ == "__main__":
    main()
