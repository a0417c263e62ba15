"""Certification by bound propagation and branch and bound (aeaudit.bounds): what it proves, how fast.

Measures, on 2 CPU cores:

1. **2-D toys** (``examples/train_toys.py``): shares of the input region (normal range widened
   ``--widen``×) certified / near / falsified / unknown after ``--toy-boxes`` box evaluations, and time.
2. **MNIST {4,5,7} latent map** (``examples/train_mnist.py``): shares of the latent box (normal
   latents' range widened 3×, the latent grid's box) at δ = 2·s and at δ = s, and where the
   Figure 2 low-loss points of a grid over that box end up (falsified / near / unknown — never certified).
3. **ODDS tables** (``<data-dir>/odds``, shuttle: 9 features, cardio: 21): an MLP autoencoder trained
   as in ``audit_odds.py``; certified share after each of ``--minutes`` (one run, read at each mark).
4. **Dimension**: cardio's first k features, ``--sweep-seconds`` each: how the certified share falls with k.
5. **IBP vs CROWN**: on the same random boxes (three sizes), the mean gap between each lower bound and
   the smallest loss a 16-start, 100-step PGD finds in the box.

    python benchmarks/bench_certify.py [--models DIR] [--minutes 1,5,15] [--json out.json]

Without ``<data-dir>/odds`` the ODDS parts are skipped; ``--smoke`` runs tiny efforts only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np
import torch

from aeaudit import ScanConfig
from aeaudit.audit import prepare
from aeaudit.bounds import certify_input, certify_latent, input_region
from aeaudit.bounds.from_adapter import input_network_for, latent_network_for, model_loss_for
from aeaudit.bounds.ops import DTYPE
from aeaudit.bounds.propagate import bound_boxes
from aeaudit.probes.latent_space import widen
from aeaudit.zoo import MLPAutoencoder

EXAMPLES = C.REPO / "examples"


def train_examples(folder: Path, smoke: bool) -> None:
    """Train the toys and the MNIST model with the example scripts unless ``folder`` holds them."""
    env = {**os.environ, "PYTHONPATH": str(C.REPO)}
    steps = ["--steps", "200"] if smoke else []
    for marker, script in (("toys.json", "train_toys.py"), ("mnist457_conv.pt", "train_mnist.py")):
        if not (folder / marker).is_file():
            C.progress(f"training the example models of examples/{script}")
            command = [sys.executable, str(EXAMPLES / script), "--out", str(folder), *steps]
            subprocess.run(command, env=env, check=True, capture_output=True)


def summary(result) -> dict:
    out = {
        k: result.to_dict()[k]
        for k in ("shares", "counts", "evaluations", "pgd_points", "stop_reason", "bounds", "counterexamples_found")
    }
    out["seconds"] = round(result.seconds, 1)
    out["best_counterexample"] = (
        {"loss": result.counterexamples[0].loss, "distance": result.counterexamples[0].distance}
        if result.counterexamples
        else None
    )
    return out


def certify_state(state, widen_factor: float, **effort):
    """Certify the input region of a prepared audit state (the scan's own τ_op, δ and reference set)."""
    b, a64 = state.baseline, state.verifier.adapter
    ref = b.reference.detach().to("cpu", DTYPE)
    net = input_network_for(a64, ref[:256])
    lo, hi, _ = input_region(ref, b.domain.low, b.domain.high, widen=widen_factor)
    return (
        net,
        certify_input(
            net, ref, lo, hi, tau_op=b.tau_op, delta=b.min_distance, model_loss=model_loss_for(a64), **effort
        ),
        (lo, hi),
    )


# --------------------------------------------------------------------------- IBP vs CROWN
def pgd_minimum(net, lo: torch.Tensor, hi: torch.Tensor, starts: int, steps: int) -> torch.Tensor:
    """The smallest loss projected Adam finds in each box (an upper bound of the true minimum)."""
    B, d = lo.shape
    g = torch.Generator().manual_seed(0)
    blo, bhi = lo.repeat_interleave(starts, 0), hi.repeat_interleave(starts, 0)
    u = torch.rand(blo.shape, generator=g, dtype=DTYPE).requires_grad_(True)
    adam = torch.optim.Adam([u], lr=0.05)
    best = torch.full((B * starts,), torch.inf, dtype=DTYPE)
    for _ in range(steps):
        loss, _ = net.evaluate(blo + u * (bhi - blo))
        best = torch.minimum(best, loss.detach())
        adam.zero_grad()
        loss.sum().backward()
        adam.step()
        with torch.no_grad():
            u.clamp_(0, 1)
    return best.reshape(B, starts).min(dim=1).values


def bound_gaps(net, root_lo, root_hi, tau: float, boxes: int, starts: int = 16, steps: int = 100) -> dict:
    """Mean ``PGD minimum − lower bound`` for IBP and CROWN on the same random boxes at three sizes."""
    root_lo, root_hi = torch.as_tensor(root_lo, dtype=DTYPE), torch.as_tensor(root_hi, dtype=DTYPE)
    g = torch.Generator().manual_seed(0)
    out = {"pgd": f"{starts} starts x {steps} projected Adam steps per box"}
    for fraction in (1 / 4, 1 / 16, 1 / 64):
        width = (root_hi - root_lo) * fraction
        lo = root_lo + torch.rand(boxes, root_lo.numel(), generator=g, dtype=DTYPE) * (root_hi - root_lo - width)
        hi = lo + width
        found = pgd_minimum(net, lo, hi, starts, steps)
        row = {"boxes": boxes, "pgd_min_mean": float(found.mean())}
        for method in ("ibp", "crown"):
            lb = bound_boxes(net, lo, hi, method).loss_lower
            assert bool((lb <= found * (1 + 1e-9)).all()), f"{method} bound above a found loss"  # soundness
            row[method] = {
                "mean_gap": float((found - lb).mean()),
                "mean_bound": float(lb.mean()),
                "certified_boxes": int((lb > tau).sum()),
            }
        out[f"side 1/{round(1 / fraction)}"] = row
    return out


# --------------------------------------------------------------------------- sections
def toys(args, folder: Path) -> list[dict]:
    rows = []
    for entry in json.loads((folder / "toys.json").read_text()):
        name = Path(entry["model"]).stem
        cfg = ScanConfig().with_overrides(arch=entry["arch"], activation=entry["activation"], seed=0, quiet=True)
        state = prepare(entry["model"], entry["data"], cfg)
        net, result, (lo, hi) = certify_state(state, args.widen, max_boxes=args.toy_boxes)
        row = {
            "model": name,
            "arch": entry["arch"],
            "activation": entry["activation"],
            **summary(result),
            "region": {
                "low": lo.tolist(),
                "high": hi.tolist(),
                "delta": state.baseline.min_distance,
                "tau_op": state.baseline.tau_op,
            },
        }
        row["bound_gaps"] = bound_gaps(net, lo, hi, state.baseline.tau_op, args.gap_boxes)
        rows.append(row)
        sh = row["shares"]
        C.progress(
            f"{name:18s} certified {sh['certified']:.3f} near {sh['near']:.3f} falsified {sh['falsified']:.3f} "
            f"unknown {sh['unknown']:.4f} ({row['evaluations']} boxes, {row['seconds']} s)"
        )
    return rows


def box_state_of(result, points: np.ndarray) -> np.ndarray:
    """The state of the box holding each point (``"certified"``, ``"near"``, ...)."""
    states = np.full(len(points), "outside", dtype=object)
    for state in ("certified", "near", "falsified", "unknown"):
        lo, hi = result.box_bounds(state)
        for i in range(0, len(lo), 2048):
            inside = ((points[:, None] >= lo[None, i : i + 2048]) & (points[:, None] <= hi[None, i : i + 2048])).all(2)
            states[inside.any(1)] = state
    return states


def mnist(args, folder: Path) -> dict:
    state = prepare(str(folder / "mnist457_conv.pt"), str(folder / "mnist457_normal.npy"), ScanConfig(quiet=True))
    b, a64 = state.baseline, state.verifier.adapter
    ref = b.reference.detach().to("cpu", DTYPE)
    with torch.no_grad():
        z = a64.encode(ref).reshape(ref.shape[0], -1)
    lo, hi = (t.numpy() for t in widen(z.min(0).values, z.max(0).values, 3.0))
    net = latent_network_for(a64, z[:64], b.domain)
    # the Figure 2 map: a grid over the same box, each decode's own loss
    n = args.grid
    axes = [np.linspace(lo[k], hi[k], n) for k in range(2)]
    grid = np.stack(np.meshgrid(*axes, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        loss, point = net.evaluate(torch.as_tensor(grid))
    dist = np.concatenate(
        [b.neighbours.query(point[i : i + 2048].float())[0].double().numpy() for i in range(0, len(point), 2048)]
    )
    loss = loss.numpy()
    out = {
        "latent_box": {"low": lo.tolist(), "high": hi.tolist()},
        "tau_op": b.tau_op,
        "tau_min": b.tau_min,
        "scale": b.scale,
        "grid": n,
        "grid_max_distance_ratio": float(dist.max() / b.scale),
        "runs": {},
        "bound_gaps": bound_gaps(net, lo, hi, b.tau_op, max(4, args.gap_boxes // 4), starts=4, steps=30),
    }
    for label, delta in (("delta = 2s", b.min_distance), ("delta = s", b.scale)):
        end = time.perf_counter() + args.mnist_seconds
        result = certify_latent(
            net,
            ref,
            lo,
            hi,
            tau_op=b.tau_op,
            delta=delta,
            max_boxes=10**9,
            batch_size=64,
            deadline=lambda end=end: time.perf_counter() > end,
            model_loss=model_loss_for(a64),
        )
        run = summary(result)
        for tag, mask in (("loss <= tau_op", loss <= b.tau_op), ("loss <= tau_min", loss <= b.tau_min)):
            states = box_state_of(result, grid[mask])
            run[f"figure2 grid points with {tag}"] = {s: int((states == s).sum()) for s in np.unique(states)}
        run["figure2 low-loss points far (>= delta)"] = int(((loss <= b.tau_op) & (dist >= delta)).sum())
        out["runs"][label] = run
        C.progress(
            f"MNIST latent, {label}: {run['shares']} ({run['evaluations']} boxes, {run['seconds']} s); "
            f"Figure-2 points: {run['figure2 grid points with loss <= tau_op']}"
        )
    return out


def train_odds(x: np.ndarray, seed: int, steps: int) -> tuple[MLPAutoencoder, np.ndarray]:
    """The audit_odds.py detector: features standardised with the normal rows; [n, 32, 4, 32, n] ReLU, plain MSE."""
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-8] = 1.0
    xs = ((x - mean) / std).astype(np.float32)
    n = x.shape[1]
    torch.manual_seed(seed)
    model = MLPAutoencoder([n, 32, min(4, n - 1), 32, n])
    C.train_plain(model, xs, steps=steps, lr=2e-3, batch_size=256, seed=seed)
    return model, xs


def share_at(history: list[dict], seconds: float) -> dict:
    """The shares at the last batch finished by ``seconds``."""
    last = [h for h in history if h["seconds"] <= seconds]
    h = last[-1] if last else {"seconds": 0.0, "evaluations": 0, "certified": 0.0, "near": 0.0, "falsified": 0.0}
    return {k: h[k] for k in ("seconds", "evaluations", "certified", "near", "falsified")}


def odds(args, table: str) -> dict | None:
    real = C.odds(args.data_dir, table)
    if real is None:
        return None
    x, y = real
    model, xs = train_odds(x[y == 0], seed=0, steps=args.odds_steps)
    state = prepare(model, xs, ScanConfig(seed=0, quiet=True))
    marks = sorted(60.0 * m for m in args.minutes)
    end = time.perf_counter() + marks[-1]
    net, result, (lo, hi) = certify_state(
        state, args.widen, max_boxes=10**9, deadline=lambda: time.perf_counter() > end
    )
    row = {
        "table": table,
        "features": int(x.shape[1]),
        "normal_rows": int((y == 0).sum()),
        **summary(result),
        "at": {f"{m / 60:g} min": share_at(result.history, m) for m in marks},
        "bound_gaps": bound_gaps(net, lo, hi, state.baseline.tau_op, args.gap_boxes),
    }
    C.progress(
        f"{table} ({x.shape[1]} features): "
        + ", ".join(f"{k}: certified {v['certified']:.4f}" for k, v in row["at"].items())
    )
    return row


def sweep(args) -> list[dict] | None:
    real = C.odds(args.data_dir, "cardio")
    if real is None:
        return None
    x, y = real
    rows = []
    for k in args.sweep_dims:
        model, xs = train_odds(x[y == 0][:, :k], seed=0, steps=args.odds_steps)
        state = prepare(model, xs, ScanConfig(seed=0, quiet=True))
        end = time.perf_counter() + args.sweep_seconds
        _, result, _ = certify_state(
            state, args.widen, max_boxes=10**9, deadline=lambda end=end: time.perf_counter() > end
        )
        rows.append({"features": k, **summary(result)})
        C.progress(
            f"cardio first {k} features: certified {result.shares['certified']:.4f} in {result.seconds:.0f} s "
            f"({result.evaluations} boxes)"
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        type=Path,
        default=None,
        help="folder with (or for) the trained example models (default: trained afresh in a temporary folder)",
    )
    p.add_argument("--widen", type=float, default=3.0, help="input region: the normal range widened this many times")
    p.add_argument("--toy-boxes", type=int, default=20000, help="box evaluations per 2-D toy")
    p.add_argument("--gap-boxes", type=int, default=64, help="random boxes per size for IBP vs CROWN")
    p.add_argument("--grid", type=int, default=200, help="points per axis of the Figure 2 grid")
    p.add_argument("--mnist-seconds", type=float, default=300.0, help="time per MNIST latent run")
    p.add_argument("--minutes", type=lambda s: [float(v) for v in s.split(",")], default=[1.0, 5.0, 15.0])
    p.add_argument("--odds-steps", type=int, default=3000, help="Adam steps (batch 256) per ODDS detector")
    p.add_argument("--sweep-dims", type=lambda s: [int(v) for v in s.split(",")], default=[3, 6, 9, 12, 15, 21])
    p.add_argument("--sweep-seconds", type=float, default=60.0)
    p.add_argument("--skip", default="", help="comma-separated sections to skip: toys,mnist,odds,sweep")
    args = p.parse_args(argv)
    C.setup(args)
    if args.smoke:
        args.toy_boxes, args.gap_boxes, args.grid, args.mnist_seconds = 300, 8, 40, 5.0
        args.minutes, args.odds_steps, args.sweep_dims, args.sweep_seconds = [0.1], 100, [3], 5.0
    started = time.perf_counter()
    skip = set(filter(None, args.skip.split(",")))
    scratch = None if args.models else tempfile.TemporaryDirectory()
    folder = args.models or Path(scratch.name)
    folder.mkdir(parents=True, exist_ok=True)
    train_examples(folder, args.smoke)
    results: dict = {"load_average_at_start": os.getloadavg(), "threads": args.threads, "widen": args.widen}
    if "toys" not in skip:
        results["toys"] = toys(args, folder)
    if "mnist" not in skip:
        results["mnist_latent"] = mnist(args, folder)
    if "odds" not in skip:
        tables = {t: odds(args, t) for t in ("shuttle", "cardio")}
        results["odds"] = {t: r for t, r in tables.items() if r is not None} or {
            "status": "skipped",
            "reason": f"no ODDS tables under {args.data_dir / 'odds'}",
        }
    if "sweep" not in skip:
        results["dimension_sweep"] = sweep(args) or {"status": "skipped", "reason": "cardio.mat not found"}
    if scratch is not None:
        scratch.cleanup()
    return C.finish("bench_certify", args, results, started)


if __name__ == "__main__":
    main()
