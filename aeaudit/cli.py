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
) -> None:
    """Scan MODEL for blind spots against normal data; write report.json and exit with the gate's code."""
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
            **overrides,
        )
        result = run_scan(model, data, config, reporter=Reporter(enabled=False if quiet else None))
        report = result.to_dict()
        write_json(report, out / "report.json")
        if not quiet:
            console = Console(highlight=False)
            render_summary(report, console)
            console.print(f"report: {out / 'report.json'}")
        return result.exit_code()

    raise typer.Exit(run_guarded(work, debug))


def main() -> None:
    app(prog_name="aeaudit")


if __name__ == "__main__":
    main()
