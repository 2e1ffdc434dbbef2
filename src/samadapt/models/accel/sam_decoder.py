"""A faster, numerically equivalent forward pass of SAM's (and SAM 2's) mask decoder for many prompts at once.

transformers' ``SamModel.forward`` decodes N prompts by copying the image embedding N
times and running every projection over all 4096 image tokens for each prompt. The
result depends only on each prompt's own tokens, so most of that work can be shared or
reordered without changing the arithmetic beyond rounding:

- the positional embedding of the image grid is computed once per model and kept;
- in the first layer the image tokens are the same for every prompt, so their key,
  value and query projections are computed once, not N times;
- afterwards each prompt has its own image tokens, but only a handful of prompt tokens
  (T, about 7), so an attention between them is computed with the prompt side folded
  into the projection weights: (4096 x 256) @ (256 x heads*T) instead of a
  (4096 x 256) @ (256 x 128) projection followed by the attention;
- prompts with different numbers of points share one call: shorter ones are padded with
  tokens that are masked out of every attention, so they change nothing (unlike
  transformers' ``-10`` label, which zeroes a padding token but still lets it be attended);
- the two transposed convolutions that upscale the mask features run as matrix products
  a few rows of image tokens at a time, with their LayerNorm, GELUs and the product with
  the hypernetwork rows, so the full-resolution features stay in the caches; each output
  row of the masks is a contiguous run written in place, and only the masks asked for are formed;
- prompts go through in groups whose own image tokens take at most :data:`GROUP_BYTES`.

With ``precision="bf16"`` the per-prompt image tokens, their attention scores and the
upscaling are computed in bfloat16 (the prompt tokens, their MLPs and the IoU head stay in
float32): about twice as fast where the CPU multiplies bf16 natively, with masks agreeing
with the float32 ones to IoU >= 0.99 (``tests/models/accel/test_sam_decoder.py`` states the bounds).
:func:`precision_for` follows the encoder runtime's precision.

SAM's, SAM-HQ's and SAM 2's plain decoders take this path, and SAM 2's as EdgeTAM's image model
and SAM 3's tracker have it (see :data:`MODEL_CLASSES`). Their two-way transformers are the same;
SAM 2 adds an object-score token, two high-resolution features added in the upscaling, and a
stability rule for single-mask requests; SAM-HQ adds an HQ token whose mask comes from the
upscaled features through two 3x3 convolutions plus image-side features from the image
embedding and the early ViT features, computed once per call for all prompts; all handled here.
Modules replaced by an adapter (anything but transformers' and torch's own) fall back to
transformers' forward.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from samadapt.models.accel.fast_encoder import tensor_identity
from samadapt.models.accel.kept import KeptBeside
from samadapt.models.accel.sam_hq_decoder import add_hq_masks, hq_features
from samadapt.models.accel.speed import Precision
from samadapt.models.hq_fix import needs_hq_decoder_fix

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import TypeAlias

    from transformers.models.sam.modeling_sam import (
        SamAttention,
        SamMaskDecoder,
        SamModel,
        SamTwoWayAttentionBlock,
    )
    from transformers.models.sam2.modeling_sam2 import (
        Sam2Attention,
        Sam2MaskDecoder,
        Sam2Model,
        Sam2TwoWayAttentionBlock,
    )
    from transformers.models.sam_hq.modeling_sam_hq import (
        SamHQAttention,
        SamHQMaskDecoder,
        SamHQModel,
        SamHQTwoWayAttentionBlock,
    )

    # The transformers classes this pass reads, the ones :func:`supported` accepts.
    Model: TypeAlias = SamModel | SamHQModel | Sam2Model
    Decoder: TypeAlias = SamMaskDecoder | SamHQMaskDecoder | Sam2MaskDecoder
    Block: TypeAlias = SamTwoWayAttentionBlock | SamHQTwoWayAttentionBlock | Sam2TwoWayAttentionBlock
    Attention: TypeAlias = SamAttention | SamHQAttention | Sam2Attention

#: Bytes of per-prompt image tokens decoded together (8 prompts of sam-vit-base in bf16, 4 in
#: fp32). Larger tensors are fresh memory maps from the allocator on every operation, and
#: their page faults cost more than the arithmetic.
GROUP_BYTES = 64 * 2**20

#: Prompts per pass through the decoder: large enough to share the first layer's work,
#: small enough that the per-prompt image tokens (N x 4096 x 256 floats) stay near 64 MB.
CHUNK = 16

_POSITIONAL: weakref.WeakKeyDictionary[nn.Module, tuple[int, torch.Tensor]] = weakref.WeakKeyDictionary()


#: Names of the transformers model classes whose mask decoder this pass computes. EdgeTAM's image model and
#: SAM 3's tracker are SAM 2's: transformers generates their prompt encoders, positional embeddings, mask
#: decoders and image-model forward from SAM 2's (``modular_edgetam.py``, ``modular_sam3_tracker.py``:
#: subclasses with nothing of their own), so only their sizes differ.
MODEL_CLASSES = ("SamModel", "SamHQModel", "Sam2Model", "EdgeTamModel", "Sam3TrackerModel")


def supported(model: nn.Module) -> bool:
    """True when the model is one of :data:`MODEL_CLASSES` and its mask decoder is transformers' plain
    decoder (no adapter modules in it)."""
    dec = getattr(model, "mask_decoder", None)
    if dec is None or type(model).__name__ not in MODEL_CLASSES or not hasattr(dec, "upscale_conv1"):
        return False
    if type(model).__name__ == "SamHQModel" and not getattr(dec, "_samadapt_fixed", False) and needs_hq_decoder_fix():
        return False  # the faulty transformers decoder is what the fast pass would otherwise disagree with
    for module in dec.modules():  # an adapter's own layers (LoRA ...) need their own forward
        if not type(module).__module__.startswith(("torch.nn.", "transformers.")):
            return False
    return True


def precision_for(loaded: object) -> Precision:
    """The decoder's precision for a loaded model: bf16 where its encoder runtime runs in bf16.

    The encoder runtime (:mod:`samadapt.models.accel.speed`) picks bf16 on "auto" only where the
    CPU multiplies bf16 natively and the input is large enough to pay, the same conditions
    under which the decoder's bf16 path is the faster one; "fp32" there selects this path too.
    """
    return "bf16" if getattr(getattr(loaded, "runtime", None), "precision", "fp32") == "bf16" else "fp32"


def _sam(model: nn.Module) -> Model:
    """``model`` as the transformers model it is when :func:`supported` accepts it."""
    return cast("Model", model)


def _blocks(dec: Decoder) -> Iterable[Block]:
    """The blocks of the decoder's two-way transformer (a ``ModuleList``, whose items torch types as any Module)."""
    return cast("Iterable[Block]", dec.transformer.layers)


def _sam2_decoder(dec: Decoder) -> Sam2MaskDecoder | None:
    """``dec`` if it is SAM 2's decoder (the one with an object-score token), else None."""
    return cast("Sam2MaskDecoder", dec) if hasattr(dec, "obj_score_token") else None


def _hq_decoder(dec: Decoder) -> SamHQMaskDecoder | None:
    """``dec`` if it is SAM-HQ's decoder (the one with an HQ token), else None."""
    return cast("SamHQMaskDecoder", dec) if hasattr(dec, "hq_token") else None


def image_positional_embedding(model: nn.Module) -> torch.Tensor:
    """(HW, C) positional embedding of the image grid, computed once per model and its weights' version."""
    sam = _sam(model)
    param = sam.shared_image_embedding.positional_embedding
    found = _POSITIONAL.get(model)
    if found is None or found[0] != param._version or found[1].device != param.device:
        pe = sam.get_image_wide_positional_embeddings()[0]  # (C, h, w)
        found = (param._version, pe.flatten(1).transpose(0, 1).contiguous())
        _POSITIONAL[model] = found
    return found[1]


def _out_proj(att: Attention) -> nn.Linear:
    """The attention's output projection (``out_proj`` in SAM, ``o_proj`` in SAM 2)."""
    if hasattr(att, "out_proj"):
        return cast("SamAttention | SamHQAttention", att).out_proj
    return cast("Sam2Attention", att).o_proj


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, heads, L, D / heads)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _token_self_attention(att: Attention, q: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Attention among prompt tokens (N, T, C); padding tokens are never attended to."""
    h = att.num_attention_heads
    out = F.scaled_dot_product_attention(_split(att.q_proj(q), h), _split(att.k_proj(q), h),
                                         _split(att.v_proj(v), h), attn_mask=valid[:, None, None, :])
    return _out_proj(att)(out.transpose(1, 2).flatten(2))


def _self_attention_block(layer: Block, queries: torch.Tensor, tokens: torch.Tensor,
                          valid: torch.Tensor) -> torch.Tensor:
    """A two-way block's self-attention among the prompt tokens with its residual and LayerNorm
    (the first block attends without the token embeddings added and replaces the queries)."""
    if layer.skip_first_layer_pe:
        return layer.layer_norm1(_token_self_attention(layer.self_attn, queries, queries, valid))
    q = queries + tokens
    return layer.layer_norm1(queries + _token_self_attention(layer.self_attn, q, queries, valid))


_PROJECTED: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple[object, ...], torch.Tensor]]] = (
    weakref.WeakKeyDictionary())


def _projected_positions(model: nn.Module, att: Attention, name: str, dtype: torch.dtype) -> torch.Tensor:
    """The image grid's positional embedding through an attention's key or query projection, (HW, heads*d)
    in ``dtype``, kept per attention and its weights' versions.

    ``name`` "k": ``pe @ Wk.T`` (the key bias adds the same to all scores of a query: left out);
    "q": ``pe @ Wq.T + bq`` (a query bias changes the image token's scores over the prompt tokens: kept).
    """
    proj = att.k_proj if name == "k" else att.q_proj
    pe = image_positional_embedding(model)
    params = (proj.weight, proj.bias, _sam(model).shared_image_embedding.positional_embedding)
    key = (dtype, pe.device, *(p._version for p in params), *(id(p) for p in params))
    kept = _PROJECTED.setdefault(att, {})
    found = kept.get(name)
    if found is None or found[0] != key:
        out = pe @ proj.weight.T if name == "k" else F.linear(pe, proj.weight, proj.bias)
        found = (key, out.to(dtype).contiguous())
        kept[name] = found
    return found[1]


def _block_diagonal(x: torch.Tensor) -> torch.Tensor:
    """(N, h, T, d) -> (N*h*T, h*d): row (n, i, t) holds x[n, i, t] in head i's d columns, zeros elsewhere.

    A product with a (h*d)-wide per-head projection is then each row's product with its own head's part:
    all prompts and heads in one matrix product, laid out as the scores need.
    """
    n, h, t, d = x.shape
    eye = torch.eye(h, dtype=x.dtype, device=x.device)
    return torch.einsum("nitd,ij->nitjd", x, eye).reshape(n * h * t, h * d)


def _fold_queries(att: Attention, q: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-token queries (N, T, C) of a token-to-image attention folded into its key weights, for each
    prompt's own image tokens.

    Returns:
        (N, heads*T, C) rows whose products with the image tokens are the scores' image part (the key bias
        adds the same number to every score of a query, which the softmax over the image ignores), and
        the (N*heads*T, heads*d) block-diagonal scaled queries whose product with the projected positional
        embedding (:func:`_projected_positions`) is the positional part.
    """
    h, c = att.num_attention_heads, q.shape[-1]
    d = att.internal_dim // h
    qh = _split(att.q_proj(q), h) * d**-0.5  # (N, h, T, d)
    rows = torch.einsum("nhtd,hdc->nhtc", qh, att.k_proj.weight.view(h, d, c)).flatten(1, 2)
    return rows.to(dtype), _block_diagonal(qh).to(dtype)


#: Per image-embedding tensor: the first layer's projections of its image tokens (:func:`_first_layer`).
_FIRST_LAYER: KeptBeside[tuple[torch.Tensor, torch.Tensor]] = KeptBeside()


def _first_layer(model: Model, image: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first layer's projections of the image tokens all prompts share, ``keys`` (1, HW, C), made from the
    embedding ``image``: the token-to-image attention's keys and values (2, 1, heads, HW, d) and the
    image-to-token attention's queries (HW, heads*d), all float32.

    They depend on the embedding and the weights alone, so they are kept beside the embedding tensor
    (changed weights or embedding values recompute).
    """
    layer = next(iter(_blocks(model.mask_decoder)))
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    params = (*(p for m in (t2i, i2t) for p in m.parameters()), model.prompt_encoder.no_mask_embed.weight,
              model.shared_image_embedding.positional_embedding)
    key = (*tensor_identity(image), *(v for p in params for v in tensor_identity(p)))

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        pe, h = image_positional_embedding(model), t2i.num_attention_heads
        kv = torch.stack([_split(t2i.k_proj(keys + pe), h), _split(t2i.v_proj(keys), h)])
        return kv, i2t.q_proj(keys[0] + pe)

    return _FIRST_LAYER.get(image, key, (model,), compute)


def _tokens_to_image_shared(att: Attention, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Prompt tokens (N, T, C) attend to the image tokens all prompts share, given their key and value
    projections ``kv`` (:func:`_first_layer`)."""
    h, (n, t, _c) = att.num_attention_heads, q.shape
    d = att.internal_dim // h
    qh = _split(att.q_proj(q), h)  # (N, h, T, d)
    out = F.scaled_dot_product_attention(qh.transpose(0, 1).reshape(1, h, n * t, d), kv[0], kv[1])
    out = out.view(h, n, t, d).permute(1, 2, 0, 3)
    return _out_proj(att)(out.reshape(n, t, h * d))


def _tokens_to_image(att: Attention, scores: torch.Tensor, keys: list[torch.Tensor]) -> torch.Tensor:
    """Prompt tokens attend to each prompt's own image tokens ``keys`` (N of (HW, C)), given the scores
    (N, heads*T, HW) of their folded queries (:func:`_fold_queries`) against ``keys + pe``."""
    h, (n, ht, _hw), c = att.num_attention_heads, scores.shape, keys[0].shape[-1]
    t, d = ht // h, att.internal_dim // h
    weights = torch.softmax(scores, dim=-1)  # over the image
    ctx = torch.stack([weights[p] @ k for p, k in enumerate(keys)]).view(n, h, t, c).float()
    wv, bv = att.v_proj.weight.view(h, d, c), att.v_proj.bias.view(1, 1, h, d)
    out = torch.einsum("nhtc,hdc->nthd", ctx, wv) + bv  # the rows of weights sum to 1
    return _out_proj(att)(out.reshape(n, t, h * d))


def _image_to_tokens(model: nn.Module, att: Attention, norm: nn.LayerNorm, keys: torch.Tensor | list[torch.Tensor],
                     q: torch.Tensor, v: torch.Tensor, padding: torch.Tensor, dtype: torch.dtype,
                     shared: torch.Tensor | None,
                     following: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    """Image tokens (query input ``keys + pe``) attend to prompt tokens (N, T, C); the layer's
    LayerNorm follows. One prompt at a time: its attention update, the LayerNorm and the next
    attention's scores are computed while its image tokens are in the caches, one read and one
    write of them per layer.

    Scores are laid out (heads, T, HW) so the softmax over the few prompt tokens runs
    along a long contiguous axis.

    Args:
        keys: (1, HW, C) float32 image tokens all prompts share (``shared`` given) or each prompt's own,
            N of (HW, C) in ``dtype``.
        padding: (N, T) 0 for tokens, -inf for padding.
        dtype: dtype of the result (each prompt's own image tokens).
        shared: the query projections (HW, heads*d) of shared image tokens (:func:`_first_layer`); None
            when ``keys`` are each prompt's own.
        following: rows (N, R, C) of the next token-to-image attention's folded queries (:func:`_fold_queries`)
            and that attention's scores (N, R, HW), holding their positional part, to which the products of
            the rows with the result are added.

    Returns:
        ``norm(keys + update)`` for each prompt, N of (HW, C).
    """
    h, (n, t, c) = att.num_attention_heads, q.shape
    d = att.internal_dim // h
    kh = _split(att.k_proj(q), h) * d**-0.5  # (N, h, T, d)
    vh = _split(att.v_proj(v), h)
    bias = padding[:, None, :, None]  # (N, 1, T, 1)
    if isinstance(keys, torch.Tensor):  # shared image tokens: all scores in one product
        assert shared is not None
        scores = (_block_diagonal(kh) @ shared.T).view(n, h, t, -1).add_(bias)
        weights = torch.softmax(scores, dim=2).view(n, h * t, -1).to(dtype)
        keys = [keys[0].to(dtype)] * n
    else:  # fold the prompt keys into the query weights; the positional part of all prompts in one product
        kq = torch.einsum("nhtd,hdc->nhtc", kh, att.q_proj.weight.view(h, d, c)).reshape(n, h * t, c).to(dtype)
        pq = _projected_positions(model, att, "q", dtype)
        positional = (_block_diagonal(kh.to(dtype)) @ pq.T).view(n, h, t, -1).add_(bias.to(dtype)).view(n, h * t, -1)
    proj = _out_proj(att)
    wo = proj.weight.view(c, h, d)
    # Values through the output projection. Each head's weights sum to 1 over the tokens, so
    # the output bias rides on each head's values as bias / heads.
    vo = torch.einsum("nhtd,chd->nhtc", vh, wo).add_(proj.bias / h).reshape(n, h * t, c).to(dtype)
    rows, scores = following
    out = []
    for p, x in enumerate(keys):
        if shared is not None:
            w = weights[p]
        else:
            w = torch.softmax(torch.addmm(positional[p], kq[p], x.T).view(h, t, -1), dim=1).view(h * t, -1)
        new = F.layer_norm(torch.addmm(x, w.T, vo[p]), (c,), norm.weight, norm.bias, norm.eps)
        scores[p].addmm_(rows[p], new.T)
        out.append(new)
    return out


#: Image tokens of one prompt per block of the upscaling: its intermediates (16 pixels per
#: token) stay in the caches instead of making several passes over memory.
UPSCALE_TOKENS = 4096

_UPSCALE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[object, ...], tuple[torch.Tensor, ...]]] = (
    weakref.WeakKeyDictionary())


def _upscale_weights(dec: Decoder, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The upscaling's weights as matrices in ``dtype``, kept per decoder and weights' versions.

    A 2x2 stride-2 transposed convolution maps each pixel to its 2x2 children independently:
    a matrix product per child row ``a`` (columns: child column ``b``, channel).

    Returns:
        conv1 weight for a1 = 0 and 1 (C, 2 C1), its bias (2 C1), LayerNorm weight and bias,
        conv2 weight for a2 = 0 and 1 (C1, 2 C2), its bias (2 C2).
    """
    conv1, conv2, norm = dec.upscale_conv1, dec.upscale_conv2, dec.upscale_layer_norm
    bias1, bias2 = conv1.bias, conv2.bias
    assert bias1 is not None and bias2 is not None  # transformers builds both convolutions with a bias
    params = (conv1.weight, bias1, conv2.weight, bias2, norm.weight, norm.bias)
    key = (dtype, conv1.weight.device, *(p._version for p in params), *(id(p) for p in params))
    found = _UPSCALE.get(dec)
    if found is None or found[0] != key:
        w1 = conv1.weight.permute(2, 0, 3, 1).reshape(2, conv1.in_channels, 2 * conv1.out_channels)
        w2 = conv2.weight.permute(2, 0, 3, 1).reshape(2, conv2.in_channels, 2 * conv2.out_channels)
        mats = (w1[0], w1[1], bias1.repeat(2), norm.weight, norm.bias, w2[0], w2[1], bias2.repeat(2))
        found = (key, tuple(m.detach().to(dtype).contiguous() for m in mats))
        _UPSCALE[dec] = found
    return found[1]


def _regroup_high_res(high_res: tuple[torch.Tensor, torch.Tensor], side: int,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 2's two projected high-resolution features, (1, C/8, 4 side, 4 side) and (1, C/4, 2 side, 2 side),
    channels-last and grouped by child row, so each upscaling block's rows are one contiguous run.

    Returns:
        (4, side, 4 side, C/8) indexed [2 a1 + a2, r] for pixel row 4 r + 2 a1 + a2, and
        (2, side, 2 side, C/4) indexed [a1, r] for pixel row 2 r + a1.
    """
    f0, f1 = (f[0].permute(1, 2, 0).to(dtype) for f in high_res)
    s0 = f0.reshape(side, 4, 4 * side, f0.shape[-1]).transpose(0, 1).contiguous()
    s1 = f1.reshape(side, 2, 2 * side, f1.shape[-1]).transpose(0, 1).contiguous()
    return s0, s1


def _upscale_masks(dec: Decoder, keys: list[torch.Tensor], hyper: torch.Tensor, side: int,
                   high_res: tuple[torch.Tensor, torch.Tensor] | None = None,
                   features: torch.Tensor | None = None) -> torch.Tensor:
    """Mask logits (N, M, 4 side, 4 side) from image tokens (N of (side*side, C)) and hypernetwork rows (N, M, C/8).

    ``high_res`` (SAM 2): its two high-resolution features as :func:`_regroup_high_res` gives
    them, added after the first and second transposed convolutions. ``features`` (SAM-HQ): an
    (N, side, 2, 2, 4 side, C/8) tensor that receives the upscaled features themselves, which
    is (N, 4 side, 4 side, C/8) channels-last.

    Runs in the image tokens' dtype, one prompt and rows of tokens up to :data:`UPSCALE_TOKENS` at a
    time: both transposed convolutions, the LayerNorm and GELUs and the product with the hypernetwork
    rows, so the full-resolution features are never all in memory. Output row 4 r + 2 a1 + a2
    comes from token row r, child rows a1 (first convolution) and a2 (second); splitting the
    products by a1 and a2 makes each output row a contiguous run, written in place.
    """
    n, (m, c2) = len(keys), hyper.shape[1:]
    dtype = keys[0].dtype
    w1a, w1b, b1, gamma, beta, w2a, w2b, b2 = _upscale_weights(dec, dtype)
    c1 = gamma.shape[0]
    eps = dec.upscale_layer_norm.eps
    rows = hyper.to(dtype)  # (N, M, C2)
    s0, s1 = high_res if high_res is not None else (None, None)
    out = torch.empty(n, m, side, 2, 2, 4 * side, dtype=torch.float32, device=keys[0].device)  # (.., r, a1, a2, col)
    step = max(1, UPSCALE_TOKENS // side)
    for p, tokens in enumerate(keys):
        for r in range(0, side, step):
            e = min(r + step, side)
            x = tokens[r * side : e * side]
            for a1, w1 in enumerate((w1a, w1b)):
                up = torch.addmm(b1, x, w1).view(-1, c1)  # rows (r, col, b1): pixel (2 r + a1, 2 col + b1)
                if s1 is not None:
                    up.add_(s1[a1, r:e].reshape(-1, c1))
                # aten's in-place gelu_: torch's stub of torch._C._nn leaves it out, hence the ignores here and below
                up = torch._C._nn.gelu_(F.layer_norm(up, (c1,), gamma, beta, eps))  # type: ignore[attr-defined]
                for a2, w2 in enumerate((w2a, w2b)):
                    pixels = torch.addmm(b2, up, w2).view(-1, c2)  # rows (r, col, b1, b2): pixel (4 r + 2 a1 + a2, ..)
                    if s0 is not None:
                        pixels.add_(s0[2 * a1 + a2, r:e].reshape(-1, c2))
                    pixels = torch._C._nn.gelu_(pixels)  # type: ignore[attr-defined]
                    if features is not None:
                        features[p, r:e, a1, a2].copy_(pixels.view(e - r, 4 * side, c2))
                    out[p, :, r:e, a1, a2].copy_(torch.mm(rows[p], pixels.T).view(m, e - r, -1))
    return out.view(n, m, 4 * side, 4 * side)


_WORKSPACE = threading.local()


def _workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor kept per thread for the per-prompt image tokens (its contents are not kept).

    Freshly allocated tensors this large are new memory maps whose page faults cost more
    than the arithmetic on them; reusing a few buffers avoids that.
    """
    found = getattr(_WORKSPACE, name, None)
    if found is None or found.shape != shape or found.dtype != dtype or found.device != device:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            found = torch.empty(shape, dtype=dtype, device=device)
        setattr(_WORKSPACE, name, found)
    return found


def decode_sam(model: nn.Module, image: torch.Tensor, sparse: torch.Tensor, valid: torch.Tensor,
               multimask: bool, precision: Precision = "fp32",
               high_res: tuple[torch.Tensor, torch.Tensor] | None = None,
               vit_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode N objects on one image embedding with SAM's mask decoder (inference only: no gradients).

    Args:
        model: a transformers model of :data:`MODEL_CLASSES` for which :func:`supported` is True.
        image: (1, C, h, w) image embedding.
        sparse: (N, T, C) prompt-token embeddings from the prompt encoder, padded to a common T.
        valid: (N, T) bool, False for padding tokens.
        multimask: return the 3 candidate masks (else the single-mask output).
        precision: "fp32", or "bf16" to keep each prompt's own image tokens and the upscaling
            in bfloat16 (see the module docstring).
        high_res: SAM 2's decoder only: the embedding's two projected high-resolution features
            (``high_res_0``, ``high_res_1`` of :func:`samadapt.models.sam.encode`; for SAM 3's tracker the
            first two of :meth:`~samadapt.models.sam3.Sam3Parts.tracker_embeddings`).
        vit_features: SAM-HQ only: the first early ViT features, (1, h, w, C_vit) (``vit_0``).

    Returns:
        Low-resolution logits (N, M, 4h, 4w) and predicted IoUs (N, M), M = 3 or 1.
    """
    sam = _sam(model)
    c, side = image.shape[1], image.shape[-1]
    dense = sam.prompt_encoder.no_mask_embed.weight.view(1, 1, c)
    keys = image.flatten(2).transpose(1, 2) + dense  # (1, HW, C), shared until the first update
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # Groups of prompts whose own image tokens stay under GROUP_BYTES; the projections of
    # the shared image tokens serve all of them (and the next calls on this embedding).
    group = max(1, GROUP_BYTES // (side * side * c * dtype.itemsize))
    shared = _first_layer(sam, image, keys)
    if high_res is not None:  # once for all groups
        high_res = _regroup_high_res(high_res, side, dtype)
    hq_dec = _hq_decoder(sam.mask_decoder)
    hq = (hq_dec, hq_features(hq_dec, image, vit_features, dtype)) if hq_dec is not None else None
    masks, ious = zip(*(_decode_group(sam, keys, sparse[s : s + group], valid[s : s + group], multimask, dtype,
                                      shared, high_res, hq) for s in range(0, sparse.shape[0], group)), strict=False)
    return torch.cat(masks), torch.cat(ious)


def _decode_group(model: Model, keys: torch.Tensor, sparse: torch.Tensor, valid: torch.Tensor, multimask: bool,
                  dtype: torch.dtype, shared: tuple[torch.Tensor, torch.Tensor],
                  high_res: tuple[torch.Tensor, torch.Tensor] | None = None,
                  hq: tuple[SamHQMaskDecoder, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_sam` for one group of prompts.

    ``keys`` (1, HW, C) are the shared image tokens and ``shared`` their projections in the first layer
    (:func:`_first_layer`); ``hq`` SAM-HQ's decoder and its image-side mask features from
    :func:`~samadapt.models.accel.sam_hq_decoder.hq_features`.
    """
    dec = model.mask_decoder
    tr = dec.transformer
    n, side = sparse.shape[0], math.isqrt(keys.shape[1])
    pe = image_positional_embedding(model)
    # SAM 2 puts an object-score token before SAM's IoU and mask tokens
    sam2 = _sam2_decoder(dec)
    first = [sam2.obj_score_token.weight] if sam2 is not None else []
    iou_at = len(first)
    last = [hq[0].hq_token.weight] if hq is not None else []  # SAM-HQ's token follows the mask tokens
    out_tokens = torch.cat([*first, dec.iou_token.weight, dec.mask_tokens.weight, *last]).expand(n, -1, -1)
    tokens = torch.cat([out_tokens, sparse], dim=1)
    valid = torch.cat([torch.ones(n, out_tokens.shape[1], dtype=torch.bool, device=valid.device), valid], dim=1)
    padding = torch.zeros(valid.shape, dtype=sparse.dtype, device=sparse.device).masked_fill_(~valid, float("-inf"))
    layers = list(_blocks(dec))
    queries = _self_attention_block(layers[0], tokens, tokens, valid)
    own: list[torch.Tensor] = []  # each prompt's own image tokens, after the first layer
    scores = torch.empty(0)  # the next token-to-image attention's scores, formed with ``own``
    for i, layer in enumerate(layers):
        if i == 0:  # the first layer reads the image tokens all prompts share
            att = _tokens_to_image_shared(layer.cross_attn_token_to_image, queries + tokens, shared[0])
        else:
            att = _tokens_to_image(layer.cross_attn_token_to_image, scores, own)
        queries = layer.layer_norm2(queries + att)
        queries = layer.layer_norm3(queries + layer.mlp(queries))
        # the next token-to-image attention's queries need only the prompt tokens: fold them now, so
        # that its scores are formed while the image tokens it reads are computed
        if i + 1 < len(layers):
            following = _self_attention_block(layers[i + 1], queries, tokens, valid)
            nxt = layers[i + 1].cross_attn_token_to_image
        else:
            following, nxt = queries, tr.final_attn_token_to_image
        rows, diagonal = _fold_queries(nxt, following + tokens, dtype)
        scores = (diagonal @ _projected_positions(model, nxt, "k", dtype).T).view(n, -1, pe.shape[0])
        own = _image_to_tokens(model, layer.cross_attn_image_to_token, layer.layer_norm4, own or keys,
                               queries + tokens, queries, padding, dtype, shared[1] if i == 0 else None, (rows, scores))
        queries = following
    att = _tokens_to_image(tr.final_attn_token_to_image, scores, own)
    queries = tr.layer_norm_final_attn(queries + att)
    # SAM 2 answers a single-mask request by its stability rule, which needs all four masks
    dynamic = not multimask and sam2 is not None and sam2.dynamic_multimask_via_stability
    tokens_sam = len(dec.output_hypernetworks_mlps)  # SAM's mask tokens (SAM-HQ counts its own in num_mask_tokens)
    chosen = range(1, tokens_sam) if multimask else range(tokens_sam if dynamic else 1)
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[:, iou_at + 1 + i]) for i in chosen], dim=1)
    iou = dec.iou_prediction_head(queries[:, iou_at])[:, list(chosen)]
    if hq is None:
        masks = _upscale_masks(dec, own, hyper, side, high_res)
    else:
        hq_dec, hq_image = hq
        features = _workspace("hq", (n, side, 2, 2, 4 * side, hyper.shape[-1]), dtype, keys.device)
        masks = _upscale_masks(dec, own, hyper, side, high_res, features)
        hq_rows = hq_dec.hq_mask_mlp(queries[:, iou_at + 1 + tokens_sam])  # (N, C/8)
        return add_hq_masks(hq_dec, masks, iou, features.view(n, 4 * side, 4 * side, -1), hq_image, hq_rows,
                            multimask)
    if sam2 is not None and dynamic:
        masks, iou = sam2._dynamic_multimask_via_stability(masks[None], iou[None])
        masks, iou = masks[0], iou[0]
    return masks, iou
