"""Reproduce Figure 1 of "Autoencoders for anomaly detection are unreliable" (seeds/004).

Claim: small ReLU autoencoders trained on 2-D toy data reconstruct points far outside the data
nearly perfectly (out-of-bounds blind spots, Fig. 1a–d); sigmoid autoencoders do not extrapolate
(1e) but can leave a low-loss band between two clusters that stays above the lowest normal
loss (1f). The paper shows one network per panel; here each configuration is trained over
several seeds and audited, answering "in how many seeds does the audit find blind spots?".

Per seed: train the [2,5,1,5,2] (banana-deep: [2,100,20,1,20,100,2]) autoencoder with plain
MSE, audit it with ``aeaudit.scan`` (default probes, a fixed effort), and, because the input is
2-D, also evaluate the loss on a dense grid over a box five times the data's extent — the
exhaustive answer the audit's searches can be checked against. Critical = loss ≤ the lowest
normal loss (τ_min) at distance ≥ δ from every normal sample; high = loss ≤ τ_op (1 % FPR).
"""

from __future__ import annotations

import time

import _common as C
import numpy as np
import torch

from aeaudit import scan
from aeaudit.zoo import MLPAutoencoder

CONFIGS = {  # name → (data set, layer sizes, activation, Figure 1 panel)
    "gaussian-relu": ("gaussian", [2, 5, 1, 5, 2], "relu", "1a"),
    "two-gaussians-relu": ("two_gaussians", [2, 5, 1, 5, 2], "relu", "1b"),
    "banana-relu": ("banana", [2, 5, 1, 5, 2], "relu", "1c"),
    "banana-deep-relu": ("banana", [2, 100, 20, 1, 20, 100, 2], "relu", "1d"),
    "gaussian-sigmoid": ("gaussian", [2, 5, 1, 5, 2], "sigmoid", "1e"),
    "two-gaussians-sigmoid": ("two_gaussians", [2, 5, 1, 5, 2], "sigmoid", "1f"),
}


def make_data(kind: str, seed: int = 0) -> np.ndarray:
    """100 points per distribution, as in the paper (the exact parameters are not given there)."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        x = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.8], [0.8, 1.0]], size=100)
    elif kind == "two_gaussians":
        x = np.r_[rng.normal([-2.0, -2.0], 0.5, size=(100, 2)), rng.normal([2.0, 2.0], 0.5, size=(100, 2))]
    else:  # banana: x2 = x1² with Gaussian noise
        x1 = rng.uniform(-2.0, 2.0, size=100)
        x = np.c_[x1, x1**2 + rng.normal(0.0, 0.2, size=100)]
    return x.astype(np.float32)


@torch.no_grad()
def grid_check(
    model: torch.nn.Module, x: np.ndarray, reference: np.ndarray, tau_min: float, tau_op: float, delta: float, n: int
) -> dict[str, float]:
    """Losses on an n×n grid over the data's box widened 5× about its centre; distances to the
    audit's reference split, as the audit measures them."""
    lo, hi = x.min(0), x.max(0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * 5
    axes = [np.linspace(c - h, c + h, n) for c, h in zip(centre, half)]
    g = torch.as_tensor(np.stack(np.meshgrid(*axes), -1).reshape(-1, 2), dtype=torch.float32)
    loss = (model(g) - g).pow(2).mean(1).double()
    dist = torch.cdist(g.double(), torch.as_tensor(reference, dtype=torch.float64)).min(1).values
    far = dist >= delta
    crit, high = far & (loss <= tau_min), far & (loss <= tau_op)
    return {
        "grid_points": int(g.shape[0]),
        "critical_points": int(crit.sum()),
        "high_points": int(high.sum()),
        "best_far_loss_ratio_min": float(loss[far].min() / tau_min) if far.any() and tau_min > 0 else None,
        "max_critical_distance": float(dist[crit].max()) if crit.any() else 0.0,
    }


def run_one(name: str, seed: int, steps: int, effort: str, grid: int, settings: dict) -> dict:
    kind, sizes, act, panel = CONFIGS[name]
    x = make_data(kind)
    torch.manual_seed(seed)
    model = MLPAutoencoder(sizes, activation=act)
    final = C.train_plain(model, x, steps=steps, lr=1e-2, seed=seed, full_batch=True)
    result = scan(
        model,
        x,
        seed=seed,
        effort=effort,
        probe_settings=settings,
        scorers=(),
        quiet=True,
        bounds="none",
        time_limit=None,
    )
    t = result.thresholds
    g = grid_check(model, x, x, t["tau_min"], t["tau_op"], t["min_distance"], grid)  # far from ALL normal data
    worst = result.findings[0] if result.findings else None
    return {
        "config": name,
        "panel": panel,
        "seed": seed,
        "train_mse": final,
        "tau_min": t["tau_min"],
        "tau_op": t["tau_op"],
        "min_distance": t["min_distance"],
        "audit_critical": result.counts.get("critical", 0),
        "audit_high": result.counts.get("high", 0),
        "audit_probes": [p["probe"] for p in result.to_dict(False)["probes"] if p["status"] != "skipped"],
        "audit_best_distance_ratio": worst.distance_ratio if worst else None,
        "audit_best_loss_ratio_min": worst.loss_ratio_min if worst else None,
        "grid": g,
    }


def summarise(rows: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["config"] for r in rows):
        rs = [r for r in rows if r["config"] == name]
        out[name] = {
            "panel": rs[0]["panel"],
            "seeds": len(rs),
            "seeds_audit_critical": sum(r["audit_critical"] > 0 for r in rs),
            "seeds_audit_high_or_critical": sum((r["audit_critical"] + r["audit_high"]) > 0 for r in rs),
            "seeds_grid_critical": sum(r["grid"]["critical_points"] > 0 for r in rs),
            "seeds_grid_high_or_critical": sum(r["grid"]["high_points"] > 0 for r in rs),
            "seeds_grid_critical_missed_by_audit": sum(
                r["grid"]["critical_points"] > 0 and r["audit_critical"] == 0 for r in rs
            ),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000, help="full-batch Adam steps per model")
    p.add_argument("--effort", default="standard", help="audit effort per model (quick | standard | thorough)")
    p.add_argument("--configs", default=",".join(CONFIGS))
    args = p.parse_args(argv)
    C.setup(args)
    started = time.perf_counter()
    configs = [c for c in args.configs.split(",") if c]
    seeds, steps, effort, grid, settings = args.seeds, args.steps, args.effort, 300, {}
    if args.smoke:
        configs, seeds, steps, effort, grid = ["gaussian-relu", "two-gaussians-sigmoid"], 1, 100, "quick", 60
        settings = {"steps": 20, "starts": 8, "samples": 256, "resolution": 40, "sphere_steps": 10}
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        p.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    rows = [run_one(c, s, steps, effort, grid, settings) for c in configs for s in range(seeds)]
    return C.finish(
        "repro_fig1_toys",
        args,
        {
            "paper": "seeds/004 Figure 1",
            "budget": {
                "seeds": seeds,
                "train_steps": steps,
                "audit_effort": effort,
                "probe_settings": settings,
                "grid": grid,
            },
            "summary": summarise(rows),
            "runs": rows,
        },
        started,
    )


if __name__ == "__main__":
    main()
