"""Linear relaxations of activations on an interval ``[l, u]``: lines ``a_l·x + b_l ≤ f(x) ≤ a_u·x + b_u``.

ReLU and LeakyReLU use the usual triangle relaxation of CROWN (Zhang et al. 2018): the chord
above, and below the identity or the flat/leaky branch, whichever is closer to the area of the
triangle (adaptive lower slope).

Sigmoid and tanh are convex on one side of 0 and concave on the other. Rather than solving for
exact tangent points (which a bisection only approximates), each candidate line (chord, and
tangents at ``l``, the midpoint and ``u``) is made sound by construction: the largest gap
``f(x) − (a·x + b)`` on ``[l, u]`` is attained at ``l``, ``u`` or where ``f'(x) = a``, which has a
closed form for both functions, so the intercept is shifted by exactly that gap. Of the sound
candidates the one closest to ``f`` at the midpoint is kept. All slopes are ≥ 0, which the
forward-mode propagation relies on.

Soundness under rounding: intercepts are widened by ``FUNCTION_ULPS`` ulps of the magnitudes
involved (float64 sigmoid/tanh are accurate to a few ulps) plus ``TINY``.
"""

from __future__ import annotations

import torch

FUNCTION_ULPS = 16.0
TINY = 1e-300


def _slack(*terms: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(terms[0].dtype).eps
    return FUNCTION_ULPS * eps * sum(t.abs() for t in terms) + TINY


def piecewise_linear(lo: torch.Tensor, hi: torch.Tensor, slope: float):
    """``f(x) = x`` for ``x ≥ 0`` and ``slope·x`` below (ReLU: ``slope = 0``), ``0 ≤ slope ≤ 1``."""
    active, inactive = lo >= 0, hi <= 0
    span = (hi - lo).clamp(min=torch.finfo(lo.dtype).tiny)
    a_up = (hi - slope * lo) / span
    b_up = slope * lo - a_up * lo
    a_up = torch.where(active, torch.ones_like(lo), torch.where(inactive, torch.full_like(lo, slope), a_up))
    b_up = torch.where(active | inactive, torch.zeros_like(lo), b_up + _slack(b_up, a_up * lo, a_up * hi))
    a_lo = torch.where(active | (hi >= -lo), torch.ones_like(lo), torch.full_like(lo, slope))
    a_lo = torch.where(inactive, torch.full_like(lo, slope), a_lo)
    b_lo = torch.zeros_like(lo)
    return a_lo, b_lo, a_up, b_up


def relu(lo, hi, _slope=0.0):
    return piecewise_linear(lo, hi, 0.0)


def leaky_relu(lo, hi, slope):
    return piecewise_linear(lo, hi, slope)


def _sigmoid_prime(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


def _sigmoid_critical(a):
    """The (up to two) points where ``σ'(x) = a``: ``σ = (1 ± √(1 − 4a)) / 2``; NaN where none."""
    root = torch.sqrt(1 - 4 * a)
    s = torch.stack([(1 - root) / 2, (1 + root) / 2])
    return torch.log(s) - torch.log1p(-s)


def _tanh_prime(x):
    return 1 - torch.tanh(x) ** 2


def _tanh_critical(a):
    """Where ``tanh'(x) = a``: ``tanh x = ±√(1 − a)``."""
    t = torch.sqrt(1 - a)
    return torch.stack([torch.atanh(-t), torch.atanh(t)])


def _smooth(f, fprime, critical):
    def relaxation(lo, hi, _slope=0.0):
        mid = (lo + hi) / 2
        f_lo, f_hi = f(lo), f(hi)
        width = hi - lo
        chord = torch.where(width > 1e-12 * (1 + lo.abs()), (f_hi - f_lo) / width.clamp(min=1e-300), fprime(mid))
        slopes = torch.stack([chord, fprime(lo), fprime(mid), fprime(hi)]).clamp(min=0)  # [4, ...]
        # candidate points where the gap f(x) − a·x can peak: the ends and the points with f'(x) = a
        crit = critical(slopes)  # [2, 4, ...]
        pts = torch.cat([lo.expand_as(slopes)[None], hi.expand_as(slopes)[None], crit], dim=0)
        pts = torch.where(torch.isfinite(pts), pts, lo.expand_as(pts)).clamp(min=lo, max=hi)
        gap = f(pts) - slopes * pts  # [4 points, 4 slopes, ...]
        b_up, b_lo = gap.max(dim=0).values, gap.min(dim=0).values
        mag = _slack(b_up, b_lo, slopes * lo, slopes * hi, f(pts).abs().max(dim=0).values)
        b_up, b_lo = b_up + mag, b_lo - mag
        best_up = (slopes * mid + b_up).argmin(dim=0, keepdim=True)
        best_lo = (slopes * mid + b_lo).argmax(dim=0, keepdim=True)
        pick = lambda t, i: t.gather(0, i).squeeze(0)  # noqa: E731
        return pick(slopes, best_lo), pick(b_lo, best_lo), pick(slopes, best_up), pick(b_up, best_up)

    return relaxation


sigmoid = _smooth(torch.sigmoid, _sigmoid_prime, _sigmoid_critical)
tanh = _smooth(torch.tanh, _tanh_prime, _tanh_critical)

RELAXATIONS = {"ReLU": relu, "LeakyReLU": leaky_relu, "Sigmoid": sigmoid, "Tanh": tanh}
