"""Tiny models and data shared by the tests: small enough to check by hand, fast on two CPU cores.

- :func:`projection_ae`: a linear autoencoder ``[2, 1, 2]`` that keeps the first coordinate and
  drops the second, ``f(a, b) = (a, 0)``, so ``L_R(a, b) = b² / 2``. Every point on the first
  axis reconstructs exactly: the textbook blind spot of "Autoencoders for anomaly detection are
  unreliable" (Lemma 1), at any distance from the data.
- :func:`constant_ae`: an autoencoder whose output is the data mean whatever the input, so
  ``L_R(x) = mean((x - μ)²)``: low loss only near the normal data, no blind spot far away.
- :func:`trained_toy`: the paper's ``[2, 5, 1, 5, 2]`` ReLU autoencoder trained briefly on one Gaussian.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aeaudit.zoo import MLPAutoencoder

PROJECTION_ARCH = "mlp:2,1,2"


def line_data(n: int = 200, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Points along the first axis, ``a ~ U(-3, 3)``, with a little noise on the second, float32.
    (The span is wider than [-1, 1] so that ``--bounds auto`` leaves the domain unbounded.)"""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-3.0, 3.0, n)
    b = rng.normal(0.0, noise, n)
    return np.stack([a, b], axis=1).astype(np.float32)


def gaussian_data(
    n: int = 200, seed: int = 0, centre: tuple[float, float] = (0.0, 0.0), std: float = 0.3
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.asarray(centre) + std * rng.standard_normal((n, 2))).astype(np.float32)


def projection_ae() -> MLPAutoencoder:
    """``f(a, b) = (a, 0)``: encoder weight ``[1, 0]``, decoder weight ``[1, 0]ᵀ``, no biases."""
    model = MLPAutoencoder([2, 1, 2])
    with torch.no_grad():
        enc, dec = model.encoder[0], model.decoder[0]
        enc.weight.copy_(torch.tensor([[1.0, 0.0]]))
        enc.bias.zero_()
        dec.weight.copy_(torch.tensor([[1.0], [0.0]]))
        dec.bias.zero_()
    return model.eval()


def constant_ae(mean: tuple[float, float] = (0.0, 0.0)) -> MLPAutoencoder:
    """Outputs ``mean`` for every input (zero encoder weights), so the loss grows with distance from it."""
    model = MLPAutoencoder([2, 1, 2])
    with torch.no_grad():
        model.encoder[0].weight.zero_()
        model.encoder[0].bias.zero_()
        model.decoder[0].weight.zero_()
        model.decoder[0].bias.copy_(torch.tensor(mean))
    return model.eval()


@functools.cache
def _trained_state(seed: int, activation: str, steps: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.as_tensor(gaussian_data(100, seed))
    model = MLPAutoencoder([2, 5, 1, 5, 2], activation=activation)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x) - x).pow(2).mean()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trained_toy(seed: int = 0, activation: str = "relu", steps: int = 300) -> MLPAutoencoder:
    """The ``[2, 5, 1, 5, 2]`` autoencoder of the paper's Figure 1, trained on one Gaussian (cached)."""
    model = MLPAutoencoder([2, 5, 1, 5, 2], activation=activation)
    model.load_state_dict(_trained_state(seed, activation, steps))
    return model.eval()


class EncDecNet(nn.Module):
    """An autoencoder whose halves are called ``enc`` / ``dec``."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        self.dec = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 2))

    def forward(self, x):
        return self.dec(self.enc(x))


class MethodNet(nn.Module):
    """An autoencoder with ``encode`` / ``decode`` methods and no split submodules."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 1)
        self.b = nn.Linear(1, 2)

    def encode(self, x):
        return self.a(x)

    def decode(self, z):
        return self.b(z)

    def forward(self, x):
        return self.decode(self.encode(x))


class OddNamesNet(nn.Module):
    """Encoder and decoder under names aeaudit cannot guess: ``down`` / ``up``."""

    def __init__(self):
        super().__init__()
        self.down = nn.Linear(2, 1)
        self.up = nn.Linear(1, 2)

    def forward(self, x):
        return self.up(self.down(x))


class NoSplitNet(nn.Module):
    """An autoencoder whose forward is one function: no encoder/decoder to find."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(2, 1)
        self.l2 = nn.Linear(1, 2)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


class WidenNet(nn.Module):
    """Not an autoencoder: maps 2 features to 3."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(2, 3)

    def forward(self, x):
        return self.l1(x)


class TinyVAE(nn.Module):
    """A VAE whose forward samples; ``encode`` returns ``(mu, logvar)``."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(2, 4)
        self.mu = nn.Linear(4, 1)
        self.logvar = nn.Linear(4, 1)
        self.out = nn.Linear(1, 2)

    def encode(self, x):
        h = torch.relu(self.body(x))
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        return self.out(z)

    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decode(mu + torch.randn_like(mu) * (0.5 * logvar).exp()), mu, logvar


class NoisyNet(nn.Module):
    """A random forward with no mean path: aeaudit must refuse it."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(2, 2)

    def forward(self, x):
        return self.l1(x) + torch.randn_like(x)


# ``--arch tests.helpers:NAME`` factories (importable as a package module when tests/ is on sys.path's root)
def encdec() -> nn.Module:
    return EncDecNet()


def methods() -> nn.Module:
    return MethodNet()


def oddnames() -> nn.Module:
    return OddNamesNet()


def nosplit() -> nn.Module:
    return NoSplitNet()


def widen() -> nn.Module:
    return WidenNet()


def vae() -> nn.Module:
    return TinyVAE()


def noisy() -> nn.Module:
    return NoisyNet()


def save_projection_case(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the projection AE's state_dict and its line data; return ``(model path, data path)``."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path, data_path = folder / "projection.pt", folder / "line.npy"
    torch.save(projection_ae().state_dict(), model_path)
    np.save(data_path, line_data(200, seed))
    return model_path, data_path


def save_constant_case(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the constant AE (a model with no blind spot) as TorchScript and Gaussian data around its output."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path, data_path = folder / "constant.pt", folder / "gauss.npy"
    torch.jit.save(torch.jit.script(constant_ae()), str(model_path))
    np.save(data_path, gaussian_data(200, seed))
    return model_path, data_path
