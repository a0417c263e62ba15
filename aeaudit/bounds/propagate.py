"""Bounds of the residual (and of the data-space point) over a batch of input boxes.

Two methods, both in float64:

* ``"ibp"`` — interval bound propagation (Gowal et al. 2018): every position gets an interval,
  an affine operation maps centre and radius (``W·c + b``, ``|W|·r``). The residual interval is
  ``[skip] − [output]``, which forgets that both sides move together: loose, but cheap.
* ``"crown"`` — linear relaxation (CROWN, Zhang et al. 2018): every activation is replaced by
  two lines (:mod:`.relax`) valid on its input interval, so each position is bounded by linear
  functions of the input, concretised over the box. The residual is bounded as one linear
  function: coefficient ``−1`` through ``f`` and ``+1`` on the skip, so the input terms cancel.
  Intermediate intervals are intersected with the IBP ones, so ``crown ⊆ ibp`` position by
  position. The linear functions come from *backward* propagation (tighter: the relaxation is
  chosen per bounded quantity) or from *forward* propagation (cost proportional to the input
  dimension, not to the width of the bounded layer). ``mode="auto"`` takes backward wherever it
  costs at most ``AUTO_RATIO`` times the forward pass: backward for small tabular networks,
  forward for a 2-D latent map through a conv decoder.

Rounding. Every computed bound is widened outward by ``REL_MARGIN × M``, where ``M`` is an a-priori
magnitude of all terms summed into that quantity (absolute values propagated through ``|W|``,
biases and relaxation intercepts; relaxation slopes are ≤ 1). A float64 sum of n terms errs by at
most ``n·2⁻⁵³·Σ|terms|``, so ``1e-10`` covers chains whose fan-ins add up to about 10⁶.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .network import Network
from .ops import DTYPE, Activation, numel

REL_MARGIN = 1e-10
AUTO_RATIO = 16.0
METHODS = ("ibp", "crown")
MODES = ("auto", "backward", "forward")


@dataclass
class BoxBounds:
    """Bounds for a batch of ``B`` boxes; per-sample tensors are flattened."""

    residual_lo: torch.Tensor  # [B, n]
    residual_hi: torch.Tensor
    point_lo: torch.Tensor  # [B, n_point]: the data-space point (input box, or decoded point)
    point_hi: torch.Tensor
    loss_lower: torch.Tensor  # [B]
    sensitivity: torch.Tensor | None  # [B, d]: each input side's share in the residual bounds (crown only)


def loss_lower_bound(r_lo: torch.Tensor, r_hi: torch.Tensor, loss_kind: str) -> torch.Tensor:
    """Smallest loss any residual in the per-feature intervals can have: each feature contributes
    its interval's distance from 0 (0 when the interval straddles it); shrunk by the rounding of the sum."""
    gap = torch.where(r_lo > 0, r_lo, torch.where(r_hi < 0, -r_hi, torch.zeros_like(r_lo)))
    n = gap.shape[1]
    shrink = 1.0 - (n + 8) * torch.finfo(DTYPE).eps
    sq = gap.pow(2).sum(dim=1)
    return (sq.sqrt() if loss_kind == "pyod" else sq / n) * shrink


@dataclass(frozen=True)
class Plan:
    """Which linear mode bounds the intermediate positions and the residual."""

    intermediate_backward: bool
    final_backward: bool

    @property
    def uses_forward(self) -> bool:
        return not (self.intermediate_backward and self.final_backward)

    def describe(self) -> str:
        name = {True: "backward", False: "forward"}
        return f"intermediate bounds {name[self.intermediate_backward]}, residual {name[self.final_backward]}"


def needed_positions(net: Network) -> list[int]:
    """Positions whose intervals matter: inputs of activations, and the data-space point."""
    need = {k for k, op in enumerate(net.ops) if isinstance(op, Activation) and k > 0}
    if net.point_pos > 0:
        need.add(net.point_pos)
    return sorted(need)


def plan(net: Network, mode: str = "auto") -> Plan:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode != "auto":
        return Plan(mode == "backward", mode == "backward")
    sizes = [numel(net.shape(k)) for k in range(len(net.ops) + 1)]
    forward = 2 * net.dim * sum(sizes)
    intermediate = sum(sizes[p] * sum(sizes[:p]) for p in needed_positions(net))
    final = sizes[-1] * sum(sizes)
    return Plan(intermediate <= AUTO_RATIO * forward, final <= AUTO_RATIO * forward)


def bound_boxes(
    net: Network, lo: torch.Tensor, hi: torch.Tensor, method: str = "crown", mode: str = "auto"
) -> BoxBounds:
    """Bounds over the boxes ``[lo, hi]`` (``[B, dim]``, float64) of the residual, the loss and the point."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    return _Propagation(net, lo.to(DTYPE), hi.to(DTYPE), plan(net, mode) if method == "crown" else None).run()


class _Propagation:
    """One pass over the chain for a batch of boxes."""

    def __init__(self, net: Network, lo: torch.Tensor, hi: torch.Tensor, linear: Plan | None):
        self.net, self.lo, self.hi, self.plan = net, lo, hi, linear
        self.batch = lo.shape[0]
        self.need = set(needed_positions(net))
        self.relaxations: dict[int, tuple[torch.Tensor, ...]] = {}

    def run(self) -> BoxBounds:
        net, B = self.net, self.batch
        shape0 = (B, *net.in_shape)
        L, U = {0: self.lo.reshape(shape0)}, {0: self.hi.reshape(shape0)}
        M = {0: torch.maximum(self.lo.abs(), self.hi.abs()).reshape(shape0)}
        fwd = self._identity_state() if self.plan is not None and self.plan.uses_forward else None
        fwd_skip = fwd if net.skip_pos == 0 else None
        for k, op in enumerate(net.ops):
            lo_k, hi_k, m = L[k], U[k], M[k]
            if isinstance(op, Activation):
                ol, ou = op.interval(lo_k, hi_k)
                om = m + torch.maximum(ol.abs(), ou.abs())
                if self.plan is not None:
                    self.relaxations[k] = rel = op.relaxation(lo_k, hi_k)
                    om = om + rel[1].abs() + rel[3].abs()
            else:
                centre, radius = (lo_k + hi_k) / 2, (hi_k - lo_k) / 2
                oc, orad = op.forward(centre), op.abs_linear(radius)
                om = op.abs_linear(m) + op.abs_bias()
                ol, ou = oc - orad - REL_MARGIN * om, oc + orad + REL_MARGIN * om
            if fwd is not None:
                fwd = self._forward_step(k, fwd)
            pos = k + 1
            if self.plan is not None and pos in self.need:
                if self.plan.intermediate_backward:
                    cl, cu, _ = self._backward(pos)
                else:
                    cl, cu = _concretize(fwd, self.lo, self.hi)
                cl, cu = cl.reshape(ol.shape), cu.reshape(ou.shape)
                ol = torch.maximum(ol, cl - REL_MARGIN * om)
                ou = torch.minimum(ou, cu + REL_MARGIN * om)
            L[pos], U[pos], M[pos] = ol, ou, om
            if pos == net.skip_pos:
                fwd_skip = fwd
        return self._residual(L, U, M, fwd, fwd_skip)

    def _residual(self, L, U, M, fwd, fwd_skip) -> BoxBounds:
        net, end, skip = self.net, len(self.net.ops), self.net.skip_pos
        margin = REL_MARGIN * (M[skip] + M[end]).flatten(1)
        r_lo = (L[skip] - U[end]).flatten(1) - margin
        r_hi = (U[skip] - L[end]).flatten(1) + margin
        sensitivity = None
        if self.plan is not None:
            if self.plan.final_backward:
                cl, cu, (lam_l, lam_u) = self._backward(end, skip=True)
                weight = (lam_l.abs() + lam_u.abs()).sum(dim=1)  # [B, d]
            else:
                state = _residual_state(fwd_skip, fwd)
                cl, cu = _concretize(state, self.lo, self.hi)
                weight = (state[0].abs() + state[2].abs()).flatten(2).sum(dim=2)
            r_lo = torch.maximum(r_lo, cl - margin)
            r_hi = torch.minimum(r_hi, cu + margin)
            sensitivity = weight * (self.hi - self.lo)
        p = net.point_pos
        return BoxBounds(
            r_lo, r_hi, L[p].flatten(1), U[p].flatten(1), loss_lower_bound(r_lo, r_hi, net.loss_kind), sensitivity
        )

    # ------------------------------------------------------------------ forward mode
    def _identity_state(self):
        net, B, d = self.net, self.batch, self.net.dim
        eye = torch.eye(d, dtype=DTYPE).reshape(1, d, *net.in_shape).expand(B, d, *net.in_shape)
        zero = torch.zeros(B, *net.in_shape, dtype=DTYPE)
        return eye, zero, eye, zero

    def _forward_step(self, k: int, state):
        """Linear lower/upper functions ``(Lw, Lb, Uw, Ub)`` of the input through operation ``k``."""
        op = self.net.ops[k]
        lw, lb, uw, ub = state
        if isinstance(op, Activation):
            al, bl, au, bu = self.relaxations[k]  # slopes ≥ 0 keep lower with lower, upper with upper
            return al.unsqueeze(1) * lw, al * lb + bl, au.unsqueeze(1) * uw, au * ub + bu
        B, d = lw.shape[:2]

        def cols(fn, t):
            return fn(t.reshape(B * d, *op.in_shape)).reshape(B, d, *op.out_shape)

        new_lw, new_uw = cols(op.pos_linear, lw), cols(op.pos_linear, uw)
        new_lb, new_ub = op.pos_linear(lb), op.pos_linear(ub)
        if not op.nonnegative:
            new_lw, new_uw = new_lw + cols(op.neg_linear, uw), new_uw + cols(op.neg_linear, lw)
            new_lb, new_ub = new_lb + op.neg_linear(ub), new_ub + op.neg_linear(lb)
        return new_lw, op.add_bias(new_lb), new_uw, op.add_bias(new_ub)

    # ------------------------------------------------------------------ backward mode
    def _backward(self, pos: int, skip: bool = False):
        """Bounds of every element at ``pos`` (or of the residual, ``skip=True``) by backward propagation.

        Returns ``(lower [B, K], upper [B, K], (Λ_lower, Λ_upper) [B, K, d])``."""
        net, B = self.net, self.batch
        shape = net.shape(pos)
        K = numel(shape)
        eye = torch.eye(K, dtype=DTYPE).reshape(1, K, *shape)
        lam_l = lam_u = (-eye if skip else eye).expand(B, K, *shape)
        c_l = c_u = torch.zeros(B, K, dtype=DTYPE)
        for k in range(pos - 1, -1, -1):
            op = net.ops[k]
            if isinstance(op, Activation):
                al, bl, au, bu = (t.unsqueeze(1) for t in self.relaxations[k])
                lp, ln, up, un = lam_l.clamp(min=0), lam_l.clamp(max=0), lam_u.clamp(min=0), lam_u.clamp(max=0)
                c_l = c_l + (lp * bl + ln * bu).flatten(2).sum(dim=2)
                c_u = c_u + (up * bu + un * bl).flatten(2).sum(dim=2)
                lam_l, lam_u = lp * al + ln * au, up * au + un * al
            else:
                c_l, c_u = c_l + op.bias_dot(lam_l), c_u + op.bias_dot(lam_u)
                lam_l = op.adjoint(lam_l.reshape(B * K, *op.out_shape)).reshape(B, K, *op.in_shape)
                lam_u = op.adjoint(lam_u.reshape(B * K, *op.out_shape)).reshape(B, K, *op.in_shape)
            if skip and k == net.skip_pos:
                eye_skip = torch.eye(K, dtype=DTYPE).reshape(1, K, *op.in_shape)
                lam_l, lam_u = lam_l + eye_skip, lam_u + eye_skip
        lam_l, lam_u = lam_l.reshape(B, K, -1), lam_u.reshape(B, K, -1)
        lo, hi = self.lo.unsqueeze(1), self.hi.unsqueeze(1)
        lower = (lam_l.clamp(min=0) * lo + lam_l.clamp(max=0) * hi).sum(dim=2) + c_l
        upper = (lam_u.clamp(min=0) * hi + lam_u.clamp(max=0) * lo).sum(dim=2) + c_u
        return lower, upper, (lam_l, lam_u)


def _residual_state(skip, out):
    """Linear bounds of ``skip − out`` from those of both sides (flattened)."""
    (slw, slb, suw, sub), (olw, olb, ouw, oub) = skip, out
    B, d = slw.shape[:2]
    flat = lambda t: t.reshape(B, d, -1)  # noqa: E731
    return (flat(slw) - flat(ouw), (slb - oub).flatten(1), flat(suw) - flat(olw), (sub - olb).flatten(1))


def _concretize(state, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower/upper values ``[B, N]`` of forward-mode linear bounds over the boxes ``[lo, hi]`` (``[B, d]``)."""
    lw, lb, uw, ub = state
    B, d = lw.shape[:2]
    lw, uw = lw.reshape(B, d, -1), uw.reshape(B, d, -1)
    lo, hi = lo.unsqueeze(2), hi.unsqueeze(2)
    lower = (lw.clamp(min=0) * lo + lw.clamp(max=0) * hi).sum(dim=1) + lb.reshape(B, -1)
    upper = (uw.clamp(min=0) * hi + uw.clamp(max=0) * lo).sum(dim=1) + ub.reshape(B, -1)
    return lower, upper
