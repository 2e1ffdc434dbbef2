"""Products with each prompt's image tokens computed from the layers' attention weights instead of the tokens
(for :mod:`samadapt.models.accel.sam_decoder`).

After layer l of the two-way transformer a prompt's image tokens are ``Y_l = LN_l(Y_(l-1) + W_l.T V_l)``:
``Y_0`` the image tokens all prompts share, ``W_l`` (heads*T, HW) the image-to-token attention's weights over
the T prompt tokens and ``V_l`` (heads*T, C) its values through the output projection. A LayerNorm is
``r * (x P) G + b``, with r the reciprocal deviation per token, P the projection subtracting the mean over
channels and G its weight. So for any matrix X (C, D)::

    Y_l X = A_l * (Y_0 H_0 + sum_k q_k * W_k.T (V_k H_(k-1)) + sum_(k<l) q_(k+1) (b_k H_k)) + b_l X

with ``H_l = X``, ``H_(k-1) = P G_k H_k``, ``A_l`` the product of the first l deviations r and ``q_k`` that of
the reciprocal ones before k. ``Y_0 H_0`` is the same for all prompts and is kept beside the embedding; the
rest is a product of the rows ``[W_1; q_2; W_2 q_2; ...]`` (K_l = l heads T + l - 1 of them, :class:`Trail`)
with K_l x D per prompt. A token-to-image attention's scores (queries folded into the key weights) and its
values, the next image-to-token attention's scores and the upscaling's first convolution are all such
products: with 8 heads and T = 9 prompt tokens, 72 or 145 rows instead of the 256 channels, and the
last layer's tokens are never read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

from samadapt.models.accel.kept import KeptPerModule, weights_key

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import nn

    from samadapt.models.accel.sam_decoder import Attention, Block, Decoder


def layer_norms(dec: Decoder) -> list[nn.LayerNorm]:
    """Each two-way block's LayerNorm after its image-to-token attention, first to last."""
    return [layer.layer_norm4 for layer in cast("Iterable[Block]", dec.transformer.layers)]


def fold_chain(norms: list[nn.LayerNorm], weight: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                            torch.Tensor]:
    """``weight`` X (C, D) folded back through the LayerNorms ``norms`` of layers 1..l, float32.

    Returns:
        H_0 ... H_(l-1) (each (C, D)), the rows ``b_k H_k`` for k = 1 .. l-1 stacked ((l-1, D)), and ``b_l X`` (D).
    """
    folded = [weight.float()]
    for norm in reversed(norms):
        scaled = norm.weight.float()[:, None] * folded[0]
        folded.insert(0, scaled - scaled.mean(0, keepdim=True))
    betas = [norm.bias.float() @ h for norm, h in zip(norms[:-1], folded[1:-1], strict=True)]
    rows = torch.stack(betas) if betas else folded[0].new_zeros(0, folded[0].shape[1])
    return folded[:-1], rows, norms[-1].bias.float() @ folded[-1]


def foldable_norm(norm: nn.LayerNorm) -> torch.Tensor | None:
    """The weight g (C,) float32 of a LayerNorm over channels whose centring and weight are folded into the linear
    map before it (its output centred per pixel and scaled by g, :func:`centre_scale`; the norm is then
    :func:`folded_layer_norm`); None where some g is near 0 (within 1 % of the largest), which the variance would
    divide by: the LayerNorm then runs as it is. torch's LayerNorm over rows of 64 channels takes several times
    as long as the product and the ``addcmul`` left."""
    g = norm.weight.detach().float()
    return None if bool(g.abs().min() <= 1e-2 * g.abs().max()) else g


def centre_scale(x: torch.Tensor, g: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """``x`` with each run of ``len(g)`` channels along ``dim`` centred and scaled by ``g`` (unchanged for None)."""
    if g is None:
        return x
    moved = x.movedim(dim, -1)
    blocks = moved.reshape(*moved.shape[:-1], -1, g.numel())
    return ((blocks - blocks.mean(-1, keepdim=True)) * g).reshape(moved.shape).movedim(-1, dim)


def variance_weights(g: torch.Tensor) -> torch.Tensor:
    """(C, 1) weights 1 / (C g^2): a centred, g-scaled row's product with them is the variance of the row before."""
    return (1 / (g.numel() * g * g))[:, None]


def folded_layer_norm(y: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """A LayerNorm of rows (R, C) given centred and scaled by its weight (:func:`centre_scale`): ``y * r + b``, r
    from the product of ``y^2`` with :func:`variance_weights` ``weights``; in ``y``'s dtype."""
    rstd = torch.mm(y * y, weights).float().add_(eps).rsqrt_()
    return torch.addcmul(bias.to(y.dtype), y, rstd.to(y.dtype))


#: Per token-to-image attention: its value weights folded back through the LayerNorms (:func:`value_chain`).
_VALUE_CHAINS: KeptPerModule[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = KeptPerModule()


def value_chain(dec: Decoder, att: Attention, level: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """:func:`fold_chain` of a token-to-image attention's value weights through the first ``level`` LayerNorms,
    kept per attention and weights' versions."""
    norms = layer_norms(dec)[:level]
    key = (level, *weights_key(att.v_proj.weight, *(p for n in norms for p in (n.weight, n.bias))))
    return _VALUE_CHAINS.get(att, key, lambda: fold_chain(norms, att.v_proj.weight.detach().T))


class Trail:
    """Per prompt of a group, the rows ``[W_1; q_2; W_2 q_2; ...]`` (K_l, HW) in ``dtype`` and the scale ``A_l``
    (HW,) of its image tokens after each layer so far, and each layer's values ``V_k``.

    A prompt with fewer tokens than the group's T (padding at the end, masked out of every attention) has rows
    only for its own: heads * T_p per layer. The rows of level l are the first K_l, so one buffer serves every
    level.
    """

    def __init__(self, hw: int, heads: int, tokens: list[int], width: int, depth: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        """``tokens``: each prompt's own tokens T_p; ``width``: the group's T."""
        n, self.heads, self.tokens, self.t = len(tokens), heads, tokens, width
        most = heads * width
        self.rows = torch.empty(n, most + (depth - 1) * (most + 1), hw, dtype=dtype, device=device)
        self.scale = torch.ones(n, hw, device=device)  # A_l
        self.deviation = torch.ones(n, hw, device=device)  # q_(l+1): product of 1 / r so far
        self.values: list[torch.Tensor] = []
        self.level = 0

    def width(self, level: int, p: int) -> int:
        """K_l of prompt p, its rows at level ``level``."""
        per_layer = self.heads * self.tokens[p]
        return per_layer + (level - 1) * (per_layer + 1)

    def own(self, x: torch.Tensor, p: int, dim: int = 0) -> torch.Tensor:
        """Prompt p's rows of ``x`` along ``dim`` (heads*T long, laid out (heads, T)): heads * T_p of them."""
        if self.tokens[p] == self.t:
            return x
        shape = x.shape
        split = x.reshape(*shape[:dim], self.heads, self.t, *shape[dim + 1 :])
        return split.narrow(dim + 1, 0, self.tokens[p]).reshape(*shape[:dim], -1, *shape[dim + 1 :])

    def add(self, p: int, weights: torch.Tensor, rstd: torch.Tensor) -> None:
        """Prompt p's image-to-token weights (heads*T_p, HW) and LayerNorm deviations (HW, 1) in the layer begun by
        :meth:`next_layer`."""
        per_layer = self.heads * self.tokens[p]
        if self.level == 1:
            self.rows[p, :per_layer].copy_(weights)
        else:
            base, q = self.width(self.level - 1, p), self.deviation[p]
            self.rows[p, base].copy_(q)
            torch.mul(weights, q.to(weights.dtype), out=self.rows[p, base + 1 : base + 1 + per_layer])
        r = rstd.view(-1)
        self.scale[p].mul_(r)
        self.deviation[p].div_(r)

    def next_layer(self, values: torch.Tensor) -> None:
        """Begin a layer whose values through the output projection are ``values`` (N, heads*T, C), float32."""
        self.values.append(values)
        self.level += 1


def right_side(chain: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor], trail: Trail) -> list[torch.Tensor]:
    """Per prompt, the rows (K_l, D) that multiply its trail rows at the trail's level l, for the X of ``chain``
    (:func:`fold_chain`): ``[V_1 H_0; b_1 H_1; V_2 H_1; ...]``, in the trail's dtype."""
    hs, betas, _ = chain
    products = [v @ hs[k] for k, v in enumerate(trail.values)]  # (N, heads*T, D)
    out = []
    for p in range(len(trail.tokens)):
        parts = []
        for k, product in enumerate(products):
            if k:
                parts.append(betas[k - 1 : k])
            parts.append(trail.own(product[p], p))
        out.append(torch.cat(parts).to(trail.rows.dtype))
    return out


def folded_scores(trail: Trail, norms: list[nn.LayerNorm], rows: torch.Tensor, heads: torch.Tensor,
                  shared: torch.Tensor, positions: torch.Tensor, constant: bool) -> list[torch.Tensor]:
    """Each prompt's scores ``rows @ (Y_l + pe).T`` (heads*T_p, HW) in the trail's dtype, at its current level l.

    Args:
        norms: the LayerNorms of layers 1..l.
        rows: (N, heads*T, C) float32, queries folded into the attention's weights (``q_h W_h``, per head).
        heads: (N, heads, T, d) the queries per head, in the trail's dtype.
        shared: (heads, d, HW) ``Y_0`` through the weights folded back to layer 0 (per head), trail's dtype.
        positions: (heads, d, HW) the positional embedding through the weights (with their bias).
        constant: add ``rows @ b_l`` (each row's constant over the image: needed where the softmax runs over
            the prompt tokens, not over the image).
    """
    n, r, c = rows.shape
    level, dtype = trail.level, trail.rows.dtype
    hs, betas, last = fold_chain(norms[:level], rows.reshape(n * r, c).T)
    parts = []  # columns in the order of the trail's rows: (N, heads*T, heads*T) per layer, a beta row between
    for k, v in enumerate(trail.values):
        if k:
            parts.append(betas[k - 1].view(n, r, 1).to(dtype))
        parts.append(torch.bmm(hs[k].T.reshape(n, r, c), v.transpose(1, 2)).to(dtype))
    out = []
    for p in range(n):
        t = trail.tokens[p]
        q = heads[p, :, :t]
        own = torch.cat([trail.own(trail.own(part[p], p), p, 1) if part.shape[-1] > 1 else trail.own(part[p], p)
                         for part in parts], dim=1)  # (heads*T_p, K_l)
        s = torch.bmm(q, shared).view(-1, shared.shape[-1]).addmm_(own, trail.rows[p, : trail.width(level, p)])
        s.mul_(trail.scale[p].to(dtype))
        s.view(trail.heads, t, -1).baddbmm_(q, positions)
        if constant:
            s.add_(trail.own(last.view(n, r, 1)[p], p).to(dtype))
        out.append(s)
    return out


def folded_context(trail: Trail, probs: list[torch.Tensor], shared: torch.Tensor, right: list[torch.Tensor]
                   ) -> torch.Tensor:
    """Each prompt's ``probs @ (Y_l X)`` per head, (N, heads, T, d) float32 (zero for a prompt's padding tokens),
    at the trail's level l, leaving out ``b_l X`` (the weights sum to 1: the caller adds it).

    Args:
        probs: per prompt (heads*T_p, HW) attention weights over the image, in the trail's dtype.
        shared: (heads, HW, d) ``Y_0 H_0`` per head, trail's dtype.
        right: per prompt (K_l, heads*d) :func:`right_side` for X.
    """
    h, _, d = shared.shape
    out = torch.zeros(len(probs), h, trail.t, d)
    for p, w in enumerate(probs):
        width, t = trail.width(trail.level, p), trail.tokens[p]
        wa = w.mul_(trail.scale[p].to(w.dtype))  # the weights are not needed unscaled
        m = (wa @ trail.rows[p, :width].T).view(h, t, width)  # (heads, T_p, K_l)
        ctx = torch.bmm(wa.view(h, t, -1), shared).baddbmm_(m, right[p].view(width, h, d).transpose(0, 1))
        out[p, :, :t] = ctx
    return out
