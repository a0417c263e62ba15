"""Two linear autoencoders on the same data: one with PCA weights, one trained by gradient descent.

"Autoencoders for anomaly detection are unreliable" (Lemma 1, Theorem 2 and Appendix A.1) shows
that a linear autoencoder at its optimum spans the top principal subspace, so every point
``mean + c·V_d`` of that plane is reconstructed exactly, however far it lies from the data. The
PCA model is that optimum written down (encoder ``V_dᵀ(x − mean)``, decoder ``V_d z + mean``);
the trained one gets there by Adam. aeaudit should flag both.

The data: 500 samples in 8 features, lying near a 2-D plane (plus small noise), shifted away
from the origin. Files: ``linear_pca.pt`` and ``linear_gd.pt`` (state_dicts of ``mlp:8,2,8``)
and ``linear_data.npy``.

Run and scan:

    python examples/train_linear.py --out examples/models --seed 0
    aeaudit scan examples/models/linear_pca.pt --data examples/models/linear_data.npy --arch mlp:8,2,8 --out aeaudit-out/linear_pca
    aeaudit scan examples/models/linear_gd.pt --data examples/models/linear_data.npy --arch mlp:8,2,8 --out aeaudit-out/linear_gd

Takes a few seconds.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from common import make_parser, save_data, setup, train

from aeaudit.zoo import MLPAutoencoder

log = logging.getLogger("examples.linear")

N_FEATURES, N_LATENT, N_SAMPLES = 8, 2, 500
ARCH = f"mlp:{N_FEATURES},{N_LATENT},{N_FEATURES}"


def make_data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(N_FEATURES, N_LATENT)))[0]  # orthonormal columns
    codes = rng.normal(size=(N_SAMPLES, N_LATENT)) * [2.0, 1.0]
    shift = rng.uniform(1.0, 3.0, N_FEATURES)
    return (codes @ basis.T + shift + 0.05 * rng.normal(size=(N_SAMPLES, N_FEATURES))).astype(np.float32)


def pca_autoencoder(x: np.ndarray) -> MLPAutoencoder:
    """The optimal linear autoencoder with biases: ``z = V_dᵀ(x − mean)``, ``x̂ = V_d z + mean``."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    v = vt[:N_LATENT].T  # [n, d]
    model = MLPAutoencoder([N_FEATURES, N_LATENT, N_FEATURES])
    with torch.no_grad():
        enc, dec = model.encoder[0], model.decoder[0]
        enc.weight.copy_(torch.as_tensor(v.T))
        enc.bias.copy_(torch.as_tensor(-(mean @ v)))
        dec.weight.copy_(torch.as_tensor(v))
        dec.bias.copy_(torch.as_tensor(mean))
    return model.eval()


def projector(w: np.ndarray) -> np.ndarray:
    """The orthogonal projector onto the column space of ``w``."""
    return w @ np.linalg.pinv(w)


def mse(model: MLPAutoencoder, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - x).pow(2).mean())


def main() -> None:
    parser = make_parser("Train a linear autoencoder two ways: PCA weights and gradient descent.")
    parser.add_argument("--steps", type=int, default=3000, help="full-batch Adam steps (default 3000)")
    args = setup(parser.parse_args())
    data = make_data(args.seed)
    data_path = save_data(args.out / "linear_data.npy", data)
    x = torch.as_tensor(data)

    pca = pca_autoencoder(data)
    torch.save(pca.state_dict(), args.out / "linear_pca.pt")
    log.info("PCA linear AE: MSE %.5f -> %s", mse(pca, x), args.out / "linear_pca.pt")

    gd = MLPAutoencoder([N_FEATURES, N_LATENT, N_FEATURES])
    loss = train(gd, x, steps=args.steps, lr=1e-2, seed=args.seed, label="linear AE (Adam)")
    torch.save(gd.state_dict(), args.out / "linear_gd.pt")
    log.info("trained linear AE: MSE %.5f -> %s", loss, args.out / "linear_gd.pt")
    # the trained decoder should span the PCA plane: compare the projections onto both column spaces
    p_pca = pca.decoder[0].weight.detach().numpy()
    p_gd = gd.decoder[0].weight.detach().numpy()
    gap = np.linalg.norm(projector(p_pca) - projector(p_gd), 2)
    log.info("distance between the two decoders' subspaces (spectral norm of the projector difference): %.4f", gap)
    for name in ("linear_pca", "linear_gd"):
        print(f"aeaudit scan {args.out / (name + '.pt')} --data {data_path} --arch {ARCH} --out aeaudit-out/{name}")


if __name__ == "__main__":
    main()
