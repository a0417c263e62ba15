"""Train the 2-D toy autoencoders of "Autoencoders for anomaly detection are unreliable" (Figure 1).

Three data sets of 100 points per distribution: one Gaussian, two Gaussians, and a banana
(x2 = x1² plus Gaussian noise). On each, a [2,5,1,5,2] autoencoder with ReLU and one with
sigmoid hidden units (linear last layer); on the banana also the deeper [2,100,20,1,20,100,2]
ReLU network. Each model is saved as a state_dict (``<name>.pt``), each data set as
``<data>.npy``, and ``toys.json`` lists them with the command that scans each one.

Run and scan (the architecture flags must match the model's name):

    python examples/train_toys.py --out examples/models --seed 0
    aeaudit scan examples/models/gauss1_relu.pt --data examples/models/gauss1.npy \\
        --arch mlp:2,5,1,5,2 --activation relu --out aeaudit-out/gauss1_relu
    aeaudit scan examples/models/banana_deep_relu.pt --data examples/models/banana.npy \\
        --arch mlp:2,100,20,1,20,100,2 --activation relu --out aeaudit-out/banana_deep_relu

Takes about 30 s on two CPU cores.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from common import make_parser, save_data, setup, train

from aeaudit.zoo import MLPAutoencoder

log = logging.getLogger("examples.toys")

SMALL, DEEP = [2, 5, 1, 5, 2], [2, 100, 20, 1, 20, 100, 2]


def make_datasets(seed: int) -> dict[str, np.ndarray]:
    """100 points per distribution. Spreads wider than [-1, 1], so the audit's domain stays unbounded."""
    rng = np.random.default_rng(seed)
    gauss1 = rng.normal([1.0, 1.0], 0.6, size=(100, 2))
    gauss2 = np.concatenate([rng.normal([-2.0, -1.0], 0.5, size=(100, 2)), rng.normal([2.0, 1.5], 0.5, size=(100, 2))])
    x1 = rng.uniform(-2.0, 2.0, 100)
    banana = np.stack([x1, x1**2 + rng.normal(0.0, 0.2, 100)], axis=1)
    return {name: arr.astype(np.float32) for name, arr in (("gauss1", gauss1), ("gauss2", gauss2), ("banana", banana))}


def main() -> None:
    parser = make_parser("Train the paper's 2-D toy autoencoders (Figure 1).")
    parser.add_argument("--steps", type=int, default=3000, help="full-batch Adam steps per model (default 3000)")
    args = setup(parser.parse_args())
    datasets = make_datasets(args.seed)
    for name, arr in datasets.items():
        save_data(args.out / f"{name}.npy", arr)
    runs = [(f"{d}_{act}", d, SMALL, act) for d in datasets for act in ("relu", "sigmoid")]
    runs.append(("banana_deep_relu", "banana", DEEP, "relu"))
    manifest = []
    for i, (name, data_name, sizes, activation) in enumerate(runs):
        torch.manual_seed(args.seed * 1000 + i)
        model = MLPAutoencoder(sizes, activation=activation)
        x = torch.as_tensor(datasets[data_name])
        loss = train(model, x, steps=args.steps, lr=1e-2 if sizes == SMALL else 1e-3, seed=args.seed + i, label=name)
        path = args.out / f"{name}.pt"
        torch.save(model.state_dict(), path)
        arch = "mlp:" + ",".join(map(str, sizes))
        command = (
            f"aeaudit scan {path} --data {args.out / (data_name + '.npy')} --arch {arch} "
            f"--activation {activation} --out aeaudit-out/{name}"
        )
        manifest.append(
            {
                "model": str(path),
                "data": str(args.out / f"{data_name}.npy"),
                "arch": arch,
                "activation": activation,
                "final_mse": loss,
                "scan": command,
            }
        )
        log.info("%-18s %-26s final MSE %.4f -> %s", name, arch, loss, path)
    (args.out / "toys.json").write_text(json.dumps(manifest, indent=1))
    log.info("scan commands: %s", args.out / "toys.json")
    for entry in manifest:
        print(entry["scan"])


if __name__ == "__main__":
    main()
