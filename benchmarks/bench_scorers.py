"""Benchmark of the scorers' hot paths.

1. GradCon on its own CAE (``aeaudit.zoo.GradConCAE``) over N MNIST-size inputs: the reference
   method's evaluation (one backward pass per sample) against aeaudit's batched per-sample
   gradients (activation × output-gradient products, and ``torch.func.vmap``); the scores must
   agree, and the speed ratio is printed. The floor is one batched forward+backward.
2. Energy projection (``aeaudit.zoo.ConvAutoencoder``, the MNIST example's architecture):
   inputs per second at the default step count, every input of a batch advancing together.

Weights are seeded random ones and inputs seeded uniform noise: timing does not depend on
either. Run: ``python benchmarks/bench_scorers.py [--n 1000] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from aeaudit.model import load_model
from aeaudit.scorers.energy import EnergyScorer
from aeaudit.scorers.gradcon import GradConScorer, decoder_weight_layers, gradcon_score
from aeaudit.scorers.per_sample import per_sample_grads_hooks, per_sample_grads_loop
from aeaudit.zoo import ConvAutoencoder, GradConCAE


def best_of(fn, reps: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def adapter_for(module: torch.nn.Module, x: torch.Tensor, dtype=torch.float32):
    return load_model(module.to(dtype), x[:2].to(dtype), device="cpu", input_shape=tuple(x.shape[1:]))


def bench_gradcon(n: int, reps: int, loop_n: int) -> dict:
    torch.manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    adapter = adapter_for(GradConCAE(), x)
    names, _ = decoder_weight_layers(adapter)
    out = {"inputs": n, "decoder_layers": names}
    scorers = {m: GradConScorer(method=m).fit(adapter, x, x[:64], 0.05) for m in ("hooks", "func")}
    refs = scorers["hooks"].reference_

    def floor():
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(adapter.loss(xr).sum(), xr)

    out["floor_batched_forward_backward_s"], _ = best_of(floor, reps)
    for method, scorer in scorers.items():
        out[f"batched_{method}_s"], scores = best_of(lambda s=scorer: s.score_batched(x, n), reps)
        out[f"scores_{method}"] = scores

    def loop():
        loss, grads = per_sample_grads_loop(adapter, names, x[:loop_n])
        return gradcon_score(loss, grads, refs, scorers["hooks"].beta)

    t_loop, s_loop = best_of(loop, 1)
    out["loop_s"] = t_loop * n / loop_n  # extrapolated when --loop-n < --n
    out["loop_measured_inputs"] = loop_n
    for method in scorers:
        s = out.pop(f"scores_{method}")[:loop_n]
        out[f"max_abs_diff_{method}_vs_loop"] = float((s - s_loop).abs().max())
        # relative to the scores' scale: GradCon scores cross zero, so a per-sample ratio says nothing there
        out[f"max_diff_over_max_score_{method}"] = float((s - s_loop).abs().max() / s_loop.abs().max())
        out[f"speedup_{method}"] = out["loop_s"] / out[f"batched_{method}_s"]
    # float64 equality check on a few inputs: hooks path vs the loop, per-sample gradients and scores
    x64 = x[:16].double()
    a64 = adapter_for(GradConCAE().double(), x64, torch.float64)
    a64.module.load_state_dict({k: v.double() for k, v in adapter.module.state_dict().items()})
    layers = [a64.module.get_submodule(nm) for nm in names]
    with torch.enable_grad():
        _, g_b = per_sample_grads_hooks(a64.loss, layers, x64)
    _, g_l = per_sample_grads_loop(a64, names, x64)
    out["float64_max_rel_grad_diff"] = max(float((b.detach() - lp).norm() / lp.norm()) for b, lp in zip(g_b, g_l))
    return out


def bench_energy(n: int, reps: int) -> dict:
    torch.manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    adapter = adapter_for(ConvAutoencoder(latent_dim=2), x)
    scorer = EnergyScorer().fit(adapter, x[:32], x[32:64], 0.05)
    scorer.tau_min_ = 0.0  # no early stop: every input takes every step (the worst case)
    t, proj = best_of(lambda: scorer.project(x), reps)
    return {
        "inputs": n,
        "steps": scorer.steps,
        "optimizer": scorer.optimizer,
        "seconds": t,
        "inputs_per_s": n / t,
        "mean_steps_taken": float(proj.steps.double().mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="inputs")
    p.add_argument("--loop-n", type=int, default=None, help="inputs timed in the per-sample loop (default: all)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each batched timing (best is kept)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    res = {
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_1min": load,
        "gradcon": bench_gradcon(args.n, args.reps, min(args.loop_n or args.n, args.n)),
        "energy": bench_energy(args.n, args.reps),
    }
    g, e = res["gradcon"], res["energy"]
    print(f"GradCon CAE, {g['inputs']} inputs, {args.threads} thread(s), load average {load}:")
    print(
        f"  per-sample backward loop {g['loop_s']:.2f} s | batched hooks {g['batched_hooks_s']:.2f} s "
        f"({g['speedup_hooks']:.1f}x) | batched torch.func {g['batched_func_s']:.2f} s ({g['speedup_func']:.1f}x) | "
        f"floor (one batched forward+backward) {g['floor_batched_forward_backward_s']:.2f} s"
    )
    print(
        f"  same numbers (float32): max |ΔS| / max |S| hooks {g['max_diff_over_max_score_hooks']:.1e}, "
        f"func {g['max_diff_over_max_score_func']:.1e}; per-sample gradients in float64 differ by "
        f"≤ {g['float64_max_rel_grad_diff']:.1e} relative"
    )
    print(f"Energy projection (conv AE, {e['steps']} {e['optimizer']} steps): {e['inputs_per_s']:.0f} inputs/s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
    json.dump(res, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
