"""The hand-written MNIST autoencoder of countless tutorials: flatten in forward, MLP halves, unflatten out."""

import torch
from torch import nn


class FlatMnistAE(nn.Module):
    def __init__(self, latent: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, 784), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoded = self.encoder(x.view(-1, 784))
        decoded = self.decoder(encoded)
        return decoded.view(-1, 1, 28, 28)
