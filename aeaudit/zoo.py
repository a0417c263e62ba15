"""Reference autoencoder architectures.

These are the architectures of the papers aeaudit reproduces, and the models behind the
built-in ``--arch mlp:...`` spec. Every model exposes ``encoder`` / ``decoder`` submodules
so the adapter finds the latent split without being told.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
    "linear": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(sorted(ACTIVATIONS))}") from None


class MLPAutoencoder(nn.Module):
    """Fully connected autoencoder from a list of layer sizes, e.g. ``[2, 5, 1, 5, 2]``.

    The bottleneck is the (first) smallest size. Hidden layers use ``activation``; the latent
    layer is linear (unconstrained codes); the output layer uses ``output_activation``.
    This matches the toy networks of "Autoencoders for anomaly detection are unreliable"
    (Figure 1): ReLU or sigmoid hidden units and a linear last layer.
    """

    def __init__(self, sizes: list[int], activation: str = "relu", output_activation: str = "identity"):
        super().__init__()
        if len(sizes) < 3 or sizes[0] != sizes[-1]:
            raise ValueError(f"MLP spec {sizes} must have at least 3 sizes and equal input/output sizes")
        self.sizes = list(sizes)
        bottleneck = sizes.index(min(sizes))
        if bottleneck in (0, len(sizes) - 1):
            raise ValueError(f"MLP spec {sizes} has its bottleneck at an end")
        self.encoder = self._stack(sizes[: bottleneck + 1], activation, last=None)
        self.decoder = self._stack(sizes[bottleneck:], activation, last=output_activation)

    @staticmethod
    def _stack(sizes: list[int], activation: str, last: str | None) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            is_last = i == len(sizes) - 2
            if not is_last:
                layers.append(make_activation(activation))
            elif last not in (None, "identity", "linear"):
                layers.append(make_activation(last))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ConvAutoencoder(nn.Module):
    """The image autoencoder of Figure 2 in "Autoencoders for anomaly detection are unreliable":
    two strided convolutions down, linear layers to and from a small latent, two transposed
    convolutions up, ReLU inside and a sigmoid output. Input ``(1, 28, 28)`` in ``[0, 1]``.
    """

    def __init__(self, latent_dim: int = 2, channels: tuple[int, int] = (16, 32)):
        super().__init__()
        c1, c2 = channels
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1),
            nn.ReLU(),  # 28 -> 14
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.ReLU(),  # 14 -> 7
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 64),
            nn.ReLU(),
            nn.Linear(64, c2 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (c2, 7, 7)),
            nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),  # 7 -> 14
            nn.ConvTranspose2d(c1, 1, 3, stride=2, padding=1, output_padding=1),
            nn.Sigmoid(),  # 14 -> 28
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class GradConCAE(nn.Module):
    """The convolutional autoencoder of GradCon (Kwon et al., ECCV 2020), as in its reference code:
    four Conv(k4, s2, p2) layers with 32, 32, 64, 64 channels and ReLU (28→15→8→5→3), a mirrored
    decoder of four ConvTranspose layers and a sigmoid output. Inputs ``(1, 28, 28)`` in ``[0, 1]``.
    """

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 32, 4, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=2),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 64, 4, stride=2, padding=2),
            nn.ReLU(),  # 3 -> 4
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=2, output_padding=1),
            nn.ReLU(),  # 4 -> 7
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1),
            nn.ReLU(),  # 7 -> 14
            nn.ConvTranspose2d(32, in_channels, 4, stride=2, padding=1),
            nn.Sigmoid(),  # 14 -> 28
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
