"""The mask upscaling of the batched decoder (:mod:`samadapt.models.accel.sam_decoder`): two transposed
convolutions with a LayerNorm and GELUs, then the product with each mask token's hypernetwork row.

The first convolution is folded back through the two-way transformer's image side
(:func:`first_convolution`); what is added after each convolution (constants, SAM 2's high-resolution
features) is laid out as the products' rows (:func:`added_terms`); each prompt is upscaled in blocks of
rows that stay in the caches (:func:`upscale_masks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from samadapt.models.accel.fast_encoder import tensor_identity
from samadapt.models.accel.kept import KeptBeside, KeptPerModule, weights_key
from samadapt.models.accel.sam_fold import (
    Trail,
    centre_scale,
    fold_chain,
    foldable_norm,
    folded_layer_norm,
    layer_norms,
    right_side,
    variance_weights,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from samadapt.models.accel.sam_decoder import Decoder


#: Image tokens of one prompt per block of the upscaling: its intermediates (16 pixels per
#: token) stay in the caches instead of making several passes over memory.
UPSCALE_TOKENS = 4096

_UPSCALE: KeptPerModule[tuple[torch.Tensor, ...]] = KeptPerModule()


def _folded_norm(dec: Decoder) -> torch.Tensor | None:
    """The upscaling's LayerNorm weight where its centring and weight are folded into the first convolution
    (everything added before the norm is centred per pixel and scaled by it; see
    :func:`~samadapt.models.accel.sam_fold.foldable_norm`), else None."""
    return foldable_norm(dec.upscale_layer_norm)


def upscale_weights(dec: Decoder, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The upscaling's weights after its first transposed convolution (which :func:`first_convolution`
    folds) as matrices in ``dtype``, kept per decoder and weights' versions.

    A 2x2 stride-2 transposed convolution maps each pixel to its 2x2 children independently:
    a matrix product per child row ``a`` (columns: child column ``b``, channel).

    Returns:
        The LayerNorm's weight and bias, conv2's weight for a2 = 0 and 1 (C1, 2 C2), its bias (2 C2), and where
        the norm is folded (:func:`_folded_norm`) the (C1, 1) weights 1 / (C1 g^2).
    """
    conv2, norm = dec.upscale_conv2, dec.upscale_layer_norm
    bias2 = conv2.bias
    assert bias2 is not None  # transformers builds the convolution with a bias

    def compute() -> tuple[torch.Tensor, ...]:
        w2 = conv2.weight.permute(2, 0, 3, 1).reshape(2, conv2.in_channels, 2 * conv2.out_channels)
        g = _folded_norm(dec)
        inverse = [] if g is None else [variance_weights(g)]
        mats = (norm.weight, norm.bias, w2[0], w2[1], bias2.repeat(2), *inverse)
        return tuple(m.detach().to(dtype).contiguous() for m in mats)

    key = (dtype, conv2.weight.device, *weights_key(conv2.weight, bias2, norm.weight, norm.bias))
    return _UPSCALE.get(dec, key, compute)


_FOLDED: KeptPerModule[tuple[torch.Tensor, ...]] = KeptPerModule()


def folded_weights(dec: Decoder) -> tuple[torch.Tensor, ...]:
    """The upscaling's first transposed convolution folded back through the two-way transformer's image side,
    float32, kept per decoder and weights' versions (see :func:`first_convolution`).

    With L layers, layer l's LayerNorm (weight g_l, bias b_l) and the convolution as a (C, 4 C1) matrix W
    (columns: child row, child column, channel) with bias c: H_L = W and H_(l-1) = P diag(g_l) H_l, P the
    projection that subtracts the mean over channels (which the LayerNorm does).

    Returns:
        H_0 ... H_(L-1) (each (C, 4 C1)), the rows b_l H_l for l < L stacked ((L-1, 4 C1)), and
        b_L W + c (4 C1). Where the upscaling's LayerNorm is folded (:func:`_folded_norm`), W and c are centred per
        pixel and scaled by its weight.
    """
    conv1 = dec.upscale_conv1
    norms = layer_norms(dec)
    bias1 = conv1.bias
    assert bias1 is not None  # transformers builds the convolution with a bias

    def compute() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            g = _folded_norm(dec)
            weight = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1)  # (C, a1 b1 c1)
            folded, rows, constant = fold_chain(norms, centre_scale(weight.float(), g))
        return (*folded, rows, constant + centre_scale(bias1.float().repeat(4), g))

    key = (conv1.weight.device, *weights_key(conv1.weight, bias1, dec.upscale_layer_norm.weight,
                                             *(p for n in norms for p in (n.weight, n.bias))))
    return _FOLDED.get(dec, key, compute)


def first_convolution(dec: Decoder, trail: Trail) -> Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The first transposed convolution of the upscaling without reading the last image tokens.

    The convolution of the last tokens, ``Y_L @ W + c``, is ``A_L * (Y_0 @ H_0 + rows.T @ right) + b_L W + c``
    (:mod:`~samadapt.models.accel.sam_fold`, the trail's rows at level L and :func:`folded_weights`). ``Y_0 @ H_0``
    is shared by all prompts (:class:`~samadapt.models.accel.sam_decoder.ImageSide`); each prompt's part is a
    product with K = L * heads * T + L - 1 rows instead of C: less than half the arithmetic for SAM's decoder,
    and no subtraction of large means (the mean projection is in the weights).

    Returns:
        For prompt p: ``scale`` (HW, 1), ``lhs`` (K, HW) with the scale of each image token in its column, and
        ``rhs`` (K, 4 C1) so that the convolution is ``scale * Y_0 @ H_0 + lhs.T @ rhs + b_L W + c``, all in the
        trail's dtype.
    """
    folded = folded_weights(dec)
    depth, dtype = trail.level, trail.rows.dtype
    right = right_side((list(folded[:depth]), folded[depth], folded[-1]), trail)

    def one(p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = trail.scale[p].to(dtype)
        return scale.view(-1, 1), trail.rows[p, : trail.width(depth, p)] * scale, right[p]

    return one


#: Per SAM 2 embedding (its finest high-resolution feature): the upscaling's additive terms (:func:`added_terms`).
_HIGH_RES: KeptBeside[tuple[torch.Tensor, torch.Tensor]] = KeptBeside()


def added_terms(dec: Decoder, high_res: tuple[torch.Tensor, torch.Tensor] | None, side: int,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """What the upscaling adds after its first and its second transposed convolution, laid out as their
    products' rows and columns, in ``dtype``.

    After the first: the folded convolution's constant (:func:`first_convolution`), plus SAM 2's
    high-resolution feature ``high_res[1]`` (1, C/4, 2 side, 2 side); (2, HW or 1, 2 C1) indexed
    [child row a1, token (r, col)], columns (child column b1, channel). After the second: its bias, plus
    ``high_res[0]`` (1, C/8, 4 side, 4 side); (4, 2 HW or 1, 2 C2) indexed [2 a1 + a2, (r, col, b1)], columns
    (b2, channel). SAM 2's are kept beside its embedding: they depend on it and the weights alone.
    """
    constant = folded_weights(dec)[-1].to(dtype).view(2, 1, -1)
    bias2 = upscale_weights(dec, dtype)[4].view(1, 1, -1)
    if high_res is None:
        return constant, bias2
    f0, f1 = high_res
    params = (dec.upscale_conv1.weight, dec.upscale_conv1.bias, dec.upscale_conv2.bias, dec.upscale_layer_norm.weight,
              *(p for norm in layer_norms(dec) for p in norm.parameters()))
    key = (dtype, *tensor_identity(f0), *tensor_identity(f1),
           *(v for p in params if p is not None for v in tensor_identity(p)))

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        # pixel (2 r + a1, 2 col + b1) of the first, (4 r + 2 a1 + a2, 4 col + 2 b1 + b2) of the second
        g1 = f1[0].permute(1, 2, 0).reshape(side, 2, side, 2, -1).permute(1, 0, 2, 3, 4).reshape(2, side * side, -1)
        g0 = f0[0].permute(1, 2, 0).reshape(side, 4, 2 * side, -1).transpose(0, 1).reshape(4, 2 * side * side, -1)
        g1 = centre_scale(g1, _folded_norm(dec))  # added before the LayerNorm, as the convolution's output
        return (g1.to(dtype) + constant).contiguous(), (g0.to(dtype) + bias2).contiguous()

    return _HIGH_RES.get(f0, key, (f1, dec), compute)


def upscale_masks(dec: Decoder, shared: torch.Tensor,
                   first: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]], hyper: torch.Tensor,
                   side: int, added: tuple[torch.Tensor, torch.Tensor],
                   features: torch.Tensor | None = None) -> torch.Tensor:
    """Mask logits (N, M, 4 side, 4 side) from each prompt's image tokens, of which the first transposed
    convolution is given folded (``shared`` (HW, 4 C1) in the upscaling's dtype and ``first``, from
    :func:`first_convolution`), and hypernetwork rows (N, M, C/8).

    ``added``: what is added after the first and second transposed convolutions (:func:`added_terms`: the
    folded convolution's constant and the second's bias, with SAM 2's high-resolution features). ``features``
    (SAM-HQ): an
    (N, side, 2, 2, 4 side, C/8) tensor that receives the upscaled features themselves, which
    is (N, 4 side, 4 side, C/8) channels-last.

    Runs in the folded convolution's dtype, one prompt and rows of tokens up to :data:`UPSCALE_TOKENS` at a
    time: both transposed convolutions, the LayerNorm and GELUs and the product with the hypernetwork
    rows, so the full-resolution features are never all in memory. Output row 4 r + 2 a1 + a2
    comes from token row r, child rows a1 (first convolution) and a2 (second); splitting the
    products by a1 and a2 makes each output row a contiguous run, written in place.
    """
    n, m, c2 = hyper.shape
    dtype = shared.dtype
    gamma, beta, w2a, w2b, _b2, *folded_norm = upscale_weights(dec, dtype)
    after1, after2 = added
    c1 = gamma.shape[0]
    eps = dec.upscale_layer_norm.eps
    rows = hyper.to(dtype)  # (N, M, C2)
    # (N, M, r, a1, a2, col)
    out = torch.empty(n, m, side, 2, 2, 4 * side, dtype=torch.float32, device=shared.device)
    step = max(1, UPSCALE_TOKENS // side)

    for p in range(n):
        scale, lhs, rhs = first(p)
        for r in range(0, side, step):
            e = min(r + step, side)
            tile = slice(r * side, e * side)
            for a1 in range(2):
                cols = slice(2 * c1 * a1, 2 * c1 * (a1 + 1))
                # rows (r, col, b1): pixel (2 r + a1, 2 col + b1)
                up = torch.addcmul(after1[a1, tile if after1.shape[1] > 1 else 0], shared[tile, cols], scale[tile])
                up = up.addmm_(lhs[:, tile].T, rhs[:, cols]).view(-1, c1)
                if folded_norm:  # centred and scaled by the norm's weight already (_folded_norm)
                    up = folded_layer_norm(up, folded_norm[0], beta, eps)
                else:
                    up = F.layer_norm(up, (c1,), gamma, beta, eps)
                # aten's in-place gelu_: torch's stub of torch._C._nn leaves it out, hence the ignores here and below
                up = torch._C._nn.gelu_(up)  # type: ignore[attr-defined]
                for a2, w2 in enumerate((w2a, w2b)):
                    term = after2[2 * a1 + a2, 2 * r * side : 2 * e * side] if after2.shape[1] > 1 else after2[0, 0]
                    # rows (r, col, b1, b2): pixel (4 r + 2 a1 + a2, 4 col + 2 b1 + b2)
                    pixels = torch.addmm(term, up, w2).view(-1, c2)
                    pixels = torch._C._nn.gelu_(pixels)  # type: ignore[attr-defined]
                    if features is not None:
                        features[p, r:e, a1, a2].copy_(pixels.view(e - r, 4 * side, c2))
                    out[p, :, r:e, a1, a2].copy_(torch.mm(rows[p], pixels.T).view(m, e - r, -1))
    return out.view(n, m, 4 * side, 4 * side)
