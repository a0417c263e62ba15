"""Proofs instead of searches: bound the reconstruction loss over boxes, and branch and bound.

For small MLP/conv autoencoders on tabular data, and for any autoencoder's low-dimensional latent
map, these modules prove that no point of a stated region reconstructs well (loss ≤ ``τ_op``),
or find where one does:

* :mod:`.convert` — model (Sequential, also TorchScript) → supported operations, or :class:`CannotBound`;
* :mod:`.network` — the residual chains ``x ↦ x_m − f(x_m)`` and ``z ↦ a_m − f(a_m)``, ``a = D(z)``;
* :mod:`.propagate` — float64 interval (IBP) and linear-relaxation (CROWN) bounds with a rounding margin;
* :mod:`.distance` — lower bounds of the distance from a box to the normal data, and the "near" test;
* :mod:`.falsify` — PGD inside a box for a verified counterexample;
* :mod:`.bab` — branch and bound, :class:`CertifyResult`;
* :mod:`.from_adapter` — the chains of a loaded adapter, checked against its own float64 loss.
"""

from .bab import CertifyResult, Counterexample, branch_and_bound, certify_input, certify_latent, input_region
from .convert import CannotBound
from .from_adapter import input_network_for, latent_network_for, model_loss_for
from .network import Network, check_against, input_network, latent_network

__all__ = [
    "CannotBound",
    "CertifyResult",
    "Counterexample",
    "Network",
    "branch_and_bound",
    "certify_input",
    "certify_latent",
    "check_against",
    "input_network",
    "input_network_for",
    "input_region",
    "latent_network",
    "latent_network_for",
    "model_loss_for",
]
