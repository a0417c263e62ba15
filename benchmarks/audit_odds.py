"""Audit plain autoencoders trained on a real ODDS table: blind spots next to a high AUROC.

An MLP autoencoder (ReLU, ``--hidden``-``--latent``-``--hidden``) is trained with plain MSE on
the normal rows of an ODDS table (features standardised with the normal rows' mean and std) and
scanned by ``aeaudit.scan`` with every scorer, the table's labelled anomalies given as
``--anomalies`` (evaluation only). Per seed it reports the AUROC each score reaches on the real
anomalies, and what the audit finds: verified blind spots (critical / high), how far from every
normal row, and each score's adaptive findings and verdict. The question it answers: does a
detector that separates the known anomalies almost perfectly still have far-away inputs it
calls normal?

    python benchmarks/audit_odds.py [--table shuttle] [--seeds 3] [--effort standard] [--smoke]

Without ``--data-dir``'s ``odds/<table>.mat`` it skips (``--smoke`` runs a generated stand-in).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np
import torch

from aeaudit import scan
from aeaudit.scorers import SCORERS
from aeaudit.zoo import MLPAutoencoder


def stand_in(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A generated table for --smoke: normal rows near a 3-D subspace of R^9, anomalies off it."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, 9))
    normal = rng.normal(size=(600, 3)) @ basis + 0.05 * rng.normal(size=(600, 9))
    anomalous = rng.normal(size=(60, 3)) @ basis + rng.normal(0, 1.0, size=(60, 9))
    return np.r_[normal, anomalous], np.r_[np.zeros(600, dtype=np.int64), np.ones(60, dtype=np.int64)]


def run_seed(x: np.ndarray, y: np.ndarray, seed: int, args, folder: Path) -> dict:
    normal = x[y == 0]
    mean, std = normal.mean(0), normal.std(0)
    std[std < 1e-8] = 1.0
    xs = ((x - mean) / std).astype(np.float32)
    anomalies = folder / f"anomalies_{seed}.npy"
    np.save(anomalies, xs[y == 1])
    sizes = [x.shape[1], args.hidden, args.latent, args.hidden, x.shape[1]]
    torch.manual_seed(seed)  # the initial weights
    model = MLPAutoencoder(sizes, activation="relu")
    mse = C.train_plain(model, xs[y == 0], steps=args.steps, lr=2e-3, batch_size=256, seed=seed)
    t = time.perf_counter()
    r = scan(
        model,
        xs[y == 0],
        anomalies=str(anomalies),
        scorers=tuple(SCORERS),
        effort=args.effort,
        seed=seed,
        probe_settings=args.probe_settings,
        time_limit=None,
        quiet=True,
        device=args.device,
    )
    row = {
        "seed": seed,
        "arch": "mlp:" + ",".join(map(str, sizes)),
        "train_mse": mse,
        "scan_seconds": time.perf_counter() - t,
        "status": r.status,
        "exit_code": r.exit_code(),
        "n_normal": int((y == 0).sum()),
        "n_anomalies": int((y == 1).sum()),
        "critical": r.counts["critical"],
        "high": r.counts["high"],
        "warning": r.counts["warning"],
        "regions": r.counts["regions"],
        "best_distance_ratio": max((f.distance_ratio for f in r.findings), default=None),
        "best_critical_distance_ratio": max(
            (f.distance_ratio for f in r.findings if f.severity == "critical"), default=None
        ),
        "certificates": sum(f.kind == "certificate" for f in r.findings),
        "unbounded_certificates": sum(f.kind == "certificate" and bool(f.details.get("unbounded")) for f in r.findings),
        "scorers": {
            s["scorer"]: {
                "anomalies_auroc": s["anomalies_auroc"],
                "adaptive_findings": s["adaptive_findings"],
                "adaptive_critical": s["adaptive_critical"],
                "adaptive_best_distance_ratio": s["adaptive_best_distance_ratio"],
                "adaptive_evaluations": s.get("adaptive_evaluations"),
                "adaptive_complete": s.get("adaptive_complete"),
                "verdict": s["verdict"],
            }
            for s in r.scorers["table"]
        },
    }
    return row


def main(argv: list[str] | None = None) -> dict:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--table", default="shuttle", help="ODDS table under <data-dir>/odds/ (shuttle, cardio, satellite, ...)"
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--effort", default="standard", help="scan effort per seed (quick | standard | thorough)")
    p.add_argument("--steps", type=int, default=3000, help="Adam steps (batch 256) of plain MSE training")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--latent", type=int, default=4)
    args = p.parse_args(argv)
    args.probe_settings = {}
    C.setup(args)
    started = time.perf_counter()
    real = C.odds(args.data_dir, args.table)
    seeds = args.seeds
    if real is None:
        if not args.smoke:
            C.progress(f"SKIP: {args.data_dir / 'odds' / (args.table + '.mat')} not found; pass --data-dir")
            return C.finish("audit_odds", args, {"status": "skipped", "reason": f"{args.table}.mat not found"}, started)
        x, y = stand_in()
        source = f"generated stand-in ({args.table}.mat not found)"
    else:
        x, y = real
        source = f"ODDS {args.table}.mat ({args.data_dir / 'odds'})"
    if args.smoke:
        seeds, args.steps, args.effort = 1, 50, "quick"
        args.probe_settings = {"steps": 10, "starts": 8, "samples": 256, "resolution": 20, "sphere_steps": 10}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(seeds):
            rows.append(run_seed(x, y, seed, args, Path(folder)))
            r = rows[-1]
            aurocs = ", ".join(
                f"{k} {v['anomalies_auroc']:.4f}" for k, v in r["scorers"].items() if v["anomalies_auroc"] is not None
            )
            C.progress(
                f"seed {seed}: AUROC on the real anomalies: {aurocs}; audit: {r['critical']} critical, "
                f"{r['high']} high, {r['warning']} warning(s) in {r['regions']} region(s), "
                f"best d/s {r['best_distance_ratio']}, {r['scan_seconds']:.0f} s ({r['status']})"
            )
    return C.finish(
        "audit_odds",
        args,
        {
            "status": "complete",
            "data": source,
            "budget": {
                "seeds": seeds,
                "steps": args.steps,
                "scan_effort": args.effort,
                "probe_settings": args.probe_settings,
                "threads": args.threads,
            },
            "runs": rows,
        },
        started,
    )


if __name__ == "__main__":
    main()
