"""Command line: parse → settings → library call → render → exit code.

Exit codes (the contract with CI): 0 pass, 1 findings at or above ``--fail-on``,
2 usage or input error, 3 internal error.
"""
from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import AeauditError, InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit trained autoencoder anomaly detectors for blind spots.")
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_PASS, EXIT_FINDINGS, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"aeaudit {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    """Audit trained autoencoder anomaly detectors for blind spots."""


def _split(text: Optional[str]) -> Optional[tuple[str, ...]]:
    if text is None:
        return None
    return tuple(s.strip() for s in text.split(",") if s.strip())


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
    model: Path = typer.Argument(..., help="Checkpoint: TorchScript, .pt2, state_dict (+ --arch), pickle (+ --trust-checkpoint)."),
    data: Path = typer.Option(..., "--data", help="Normal data: .npy, .npz, .csv/.tsv or .pt."),
    out: Path = typer.Option(Path("aeaudit-out"), "--out", "-o", help="Folder for report.json and report.html."),
    arch: Optional[str] = typer.Option(None, help="Architecture for a state_dict: mlp:2,5,1,5,2 | file.py:factory | pkg.mod:factory."),
    activation: str = typer.Option("relu", help="Hidden activation for --arch mlp:..."),
    output_activation: str = typer.Option("identity", help="Output activation for --arch mlp:..."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow unpickling arbitrary objects (runs code from the file)."),
    encoder: Optional[str] = typer.Option(None, help="Attribute or method of the encoder (e.g. net.enc)."),
    decoder: Optional[str] = typer.Option(None, help="Attribute or method of the decoder."),
    input_shape: Optional[str] = typer.Option(None, help="Per-sample input shape, e.g. 1,28,28."),
    data_key: Optional[str] = typer.Option(None, help="Array name inside .npz / dict .pt data."),
    anomalies: Optional[Path] = typer.Option(None, help="Known anomalies (evaluation only)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    seed: int = typer.Option(0, help="Seed for every random choice."),
    budget: float = typer.Option(60.0, help="Time budget in seconds for the searches."),
    fpr: float = typer.Option(0.01, help="False-positive rate that sets τ_op on held-out normal data."),
    threshold: Optional[float] = typer.Option(None, help="Operating threshold τ_op (overrides --fpr)."),
    min_distance: Optional[float] = typer.Option(None, help="Distance δ that counts as far (default 2·s)."),
    bounds: str = typer.Option("auto", help="Input domain: auto | none | LO,HI."),
    probes: Optional[str] = typer.Option(None, help="Comma-separated probes (default: all applicable)."),
    scorers: Optional[str] = typer.Option(None, help="Comma-separated scorers to compare."),
    latent_extent: float = typer.Option(3.0, help="Latent box = normal latents' range widened this many times."),
    top_k: int = typer.Option(64, help="Findings kept with their arrays."),
    fail_on: str = typer.Option("high", help="Gate: critical | high | never."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors."),
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

    logging.basicConfig(level=logging.WARNING if not debug else logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")

    def work() -> int:
        overrides = {}
        if probes is not None:
            overrides["probes"] = _split(probes)
        if scorers is not None:
            overrides["scorers"] = _split(scorers)
        config = ScanConfig(
            arch=arch, activation=activation, output_activation=output_activation, trust_checkpoint=trust_checkpoint,
            encoder=encoder, decoder=decoder, input_shape=parse_shape(input_shape), device=device,
            data_key=data_key, anomalies=str(anomalies) if anomalies else None, seed=seed, fpr=fpr,
            threshold=threshold, min_distance=min_distance, bounds=bounds, budget=budget, latent_extent=latent_extent,
            top_k=top_k, fail_on=fail_on, quiet=quiet, command_line=shlex.join(["aeaudit", *sys.argv[1:]]),
            config_file=str(config_file) if config_file else "",
            **overrides,
        )
        result = run_scan(model, data, config, reporter=Reporter(enabled=False if quiet else None))
        report = result.to_dict()
        write_json(report, out / "report.json")
        written = write_extra_reports(report, out / "report.html", junit, markdown)
        if not quiet:
            console = Console(highlight=False)
            render_summary(report, console)
            console.print(f"report: {out / 'report.json'}, " + ", ".join(str(w) for w in written))
        return result.exit_code()

    raise typer.Exit(run_guarded(work, debug))


@app.command()
def harden(
    model: Path = typer.Argument(..., help="Checkpoint to harden (the formats scan reads, except PyOD and .pt2)."),
    data: Path = typer.Option(..., "--data", help="Normal data: .npy, .npz, .csv/.tsv or .pt."),
    method: str = typer.Option(..., "--method", help="toll (latent-norm penalty) | gradcon (gradient constraint)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the hardened checkpoint (same format family as MODEL)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Re-initialise the weights (seeded) instead of fine-tuning."),
    steps: int = typer.Option(1000, help="Adam steps on random batches."),
    epochs: Optional[float] = typer.Option(None, help="Set --steps from passes over the training split instead."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    batch_size: int = typer.Option(64, help="Batch size."),
    beta: float = typer.Option(10.0, help="Toll: weight β of the latent-norm term (also used by the toll score)."),
    alpha: float = typer.Option(0.03, help="GradCon: weight α of the gradient-alignment term."),
    arch: Optional[str] = typer.Option(None, help="Architecture for a state_dict: mlp:2,5,1,5,2 | file.py:factory | pkg.mod:factory."),
    activation: str = typer.Option("relu", help="Hidden activation for --arch mlp:..."),
    output_activation: str = typer.Option("identity", help="Output activation for --arch mlp:..."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow unpickling arbitrary objects (runs code from the file)."),
    encoder: Optional[str] = typer.Option(None, help="Attribute or method of the encoder (e.g. net.enc)."),
    decoder: Optional[str] = typer.Option(None, help="Attribute or method of the decoder."),
    input_shape: Optional[str] = typer.Option(None, help="Per-sample input shape, e.g. 1,28,28."),
    data_key: Optional[str] = typer.Option(None, help="Array name inside .npz / dict .pt data."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    seed: int = typer.Option(0, help="Seed for the split, the batches and --from-scratch weights."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors."),
) -> None:
    """Retrain MODEL with Toll's or GradCon's loss on normal data; write a checkpoint `aeaudit scan` loads."""
    from .data import parse_shape
    from .harden import harden as run_harden
    from .model.loading import LoadOptions
    from .progress import Reporter

    logging.basicConfig(level=logging.WARNING if not debug else logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")

    def work() -> int:
        options = LoadOptions(arch=arch, activation=activation, output_activation=output_activation,
                              trust_checkpoint=trust_checkpoint, encoder=encoder, decoder=decoder,
                              input_shape=parse_shape(input_shape), device=device)
        result = run_harden(model, data, method, options=options, from_scratch=from_scratch, steps=steps, epochs=epochs,
                            lr=lr, beta=beta, alpha=alpha, batch_size=batch_size, seed=seed, data_key=data_key,
                            reporter=Reporter(enabled=False if quiet else None))
        path = result.save(out)
        if not quiet:
            console = Console(highlight=False)
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
    model: Path = typer.Argument(..., help="The original checkpoint."),
    hardened: Path = typer.Argument(..., help="The hardened checkpoint (from aeaudit harden)."),
    data: Path = typer.Option(..., "--data", help="Normal data: .npy, .npz, .csv/.tsv or .pt."),
    out: Path = typer.Option(Path("aeaudit-compare"), "--out", "-o", help="Folder for compare.json and both reports."),
    budget: float = typer.Option(60.0, help="Time budget in seconds for each model's searches."),
    arch: Optional[str] = typer.Option(None, help="Architecture for state_dicts (both models): mlp:... | file.py:factory | pkg.mod:factory."),
    activation: str = typer.Option("relu", help="Hidden activation for --arch mlp:..."),
    output_activation: str = typer.Option("identity", help="Output activation for --arch mlp:..."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow unpickling arbitrary objects (runs code from the file)."),
    encoder: Optional[str] = typer.Option(None, help="Attribute or method of the encoder (e.g. net.enc)."),
    decoder: Optional[str] = typer.Option(None, help="Attribute or method of the decoder."),
    input_shape: Optional[str] = typer.Option(None, help="Per-sample input shape, e.g. 1,28,28."),
    data_key: Optional[str] = typer.Option(None, help="Array name inside .npz / dict .pt data."),
    anomalies: Optional[Path] = typer.Option(None, help="Known anomalies (evaluation only): AUROC of each score, both models."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    seed: int = typer.Option(0, help="Seed for every random choice."),
    fpr: float = typer.Option(0.01, help="False-positive rate that sets each model's τ_op on held-out normal data."),
    bounds: str = typer.Option("auto", help="Input domain: auto | none | LO,HI."),
    probes: Optional[str] = typer.Option(None, help="Comma-separated probes (default: all applicable)."),
    scorers: Optional[str] = typer.Option(None, help="Comma-separated scorers (the hardened model's own score is added)."),
    fail_on: str = typer.Option("high", help="Gate on the hardened model: critical | high | never."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors."),
) -> None:
    """Audit MODEL and HARDENED side by side; exit 1 when the hardened model still fails the gate."""
    from .compare import compare as run_compare
    from .compare import compare_json, render_compare, validate_pair
    from .config import ScanConfig
    from .data import parse_shape
    from .progress import Reporter
    from .report import write_json

    logging.basicConfig(level=logging.WARNING if not debug else logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")

    def work() -> int:
        validate_pair(model, hardened)
        overrides = {}
        if probes is not None:
            overrides["probes"] = _split(probes)
        if scorers is not None:
            overrides["scorers"] = _split(scorers)
        config = ScanConfig(
            arch=arch, activation=activation, output_activation=output_activation, trust_checkpoint=trust_checkpoint,
            encoder=encoder, decoder=decoder, input_shape=parse_shape(input_shape), device=device, data_key=data_key,
            anomalies=str(anomalies) if anomalies else None, seed=seed, fpr=fpr, bounds=bounds, budget=budget,
            fail_on=fail_on, quiet=quiet,
            command_line=shlex.join(["aeaudit", *sys.argv[1:]]), **overrides,
        )
        result = run_compare(model, hardened, data, config, reporter=Reporter(enabled=False if quiet else None))
        for name, audit in result["results"].items():
            report = audit.to_dict()
            write_json(report, out / name / "report.json")
            write_extra_reports(report, out / name / "report.html", None, None)
        write_json(compare_json(result), out / "compare.json")
        if not quiet:
            console = Console(highlight=False)
            render_compare(result, console)
            console.print(f"compare: {out / 'compare.json'} (full audits in {out / 'original'} and {out / 'hardened'})")
        return result["exit_code"]

    raise typer.Exit(run_guarded(work, debug))


@app.command()
def report(
    results: Path = typer.Argument(..., help="A report.json written by `aeaudit scan`."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="Where to write the HTML report."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Also write JUnit XML here."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write a Markdown summary here."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors."),
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
