"""A faster, numerically equivalent forward pass of SAM's (and SAM 2's) mask decoder for many prompts at once.

transformers' ``SamModel.forward`` decodes N prompts by copying the image embedding N
times and running every projection over all 4096 image tokens for each prompt. The
result depends only on each prompt's own tokens, so most of that work can be shared or
reordered without changing the arithmetic beyond rounding:

- the positional embedding of the image grid, and its projections by each attention (per head),
  are computed once per model and kept; a prompt's positional scores are products per head
  (d = 16 multiplies per score);
- in the first layer the image tokens are the same for every prompt, so their key,
  value and query projections are computed once per embedding and kept beside it;
- afterwards each prompt has its own image tokens, but only a handful of prompt tokens
  (T, about 7), so an attention between them is computed with the prompt side folded
  into the projection weights: (4096 x 256) @ (256 x heads*T) instead of a
  (4096 x 256) @ (256 x 128) projection followed by the attention;
- each prompt's image tokens go through the image-to-token update, its LayerNorm and the next
  attention's scores while they are in the caches (one read and one write per layer);
- prompts with different numbers of points share one call: shorter ones are padded with
  tokens that are masked out of every attention, so they change nothing (unlike
  transformers' ``-10`` label, which zeroes a padding token but still lets it be attended);
- the upscaling (:mod:`samadapt.models.accel.sam_upscale`) folds its first transposed convolution
  back through the image side and runs a prompt at a time in blocks that stay in the caches;
- with at least as many prompts as cores, whole prompts go to one thread per core
  (:mod:`samadapt.models.accel.parallel`);
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
embedding and the early ViT features, computed once per embedding for all prompts; all handled here.
Modules replaced by an adapter (anything but transformers' and torch's own) fall back to
transformers' forward.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from samadapt.models.accel.fast_encoder import tensor_identity
from samadapt.models.accel.kept import KeptBeside, KeptPerModule, weights_key
from samadapt.models.accel.parallel import map_runs, prompt_threads, worth_threads
from samadapt.models.accel.sam_hq_decoder import add_hq_masks, hq_features
from samadapt.models.accel.sam_upscale import Stage, added_terms, first_convolution, folded_weights, upscale_masks
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

#: Bytes of per-prompt image tokens decoded at the same time, over all threads (32 prompts of sam-vit-base in
#: bf16, 16 in fp32): a bound on memory for long prompt lists; each prompt's tokens are worked on one at a time,
#: and larger groups share more of the per-call work (measured fastest at a whole 16-prompt chunk).
GROUP_BYTES = 64 * 2**20

#: Prompts per pass through the decoder: large enough to share the first layer's work,
#: small enough that the per-prompt image tokens (N x 4096 x 256 floats) stay near 64 MB.
CHUNK = 16

_POSITIONAL: KeptPerModule[torch.Tensor] = KeptPerModule()


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

    def compute() -> torch.Tensor:
        pe = sam.get_image_wide_positional_embeddings()[0]  # (C, h, w)
        return pe.flatten(1).transpose(0, 1).contiguous()

    return _POSITIONAL.get(model, (param.device, *weights_key(param)), compute)


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


#: Per attention: its projection of the positional embedding (an attention takes only one, "k" or "q").
_PROJECTED: KeptPerModule[torch.Tensor] = KeptPerModule()


def _projected_positions(model: nn.Module, att: Attention, name: str, dtype: torch.dtype) -> torch.Tensor:
    """The image grid's positional embedding through an attention's key or query projection, per head
    (heads, d, HW) in ``dtype``, kept per attention and its weights' versions.

    ``name`` "k": ``pe @ Wk.T`` (the key bias adds the same to all scores of a query: left out);
    "q": ``pe @ Wq.T + bq`` (a query bias changes the image token's scores over the prompt tokens: kept).
    A prompt's positional scores are then one product per head with its (T, d) queries: d = 16 multiplies
    per score instead of C = 256 through the folded rows.
    """
    proj = att.k_proj if name == "k" else att.q_proj
    pe = image_positional_embedding(model)
    key = (name, dtype, pe.device, *weights_key(proj.weight, proj.bias,
                                                _sam(model).shared_image_embedding.positional_embedding))

    def compute() -> torch.Tensor:
        out = pe @ proj.weight.T if name == "k" else F.linear(pe, proj.weight, proj.bias)
        return _heads_first(out, att.num_attention_heads).to(dtype)

    return _PROJECTED.get(att, key, compute)


def _heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(HW, heads*d) -> (heads, d, HW), contiguous."""
    return x.detach().view(x.shape[0], heads, -1).permute(1, 2, 0).contiguous()


def _fold_queries(att: Attention, q: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-token queries (N, T, C) of a token-to-image attention folded into its key weights, for each
    prompt's own image tokens.

    Returns:
        (N, heads*T, C) rows whose products with the image tokens are the scores' image part (the key bias
        adds the same number to every score of a query, which the softmax over the image ignores), and
        the (N, heads, T, d) scaled queries whose products with the projected positional embedding
        (:func:`_projected_positions`) are the positional part.
    """
    h, c = att.num_attention_heads, q.shape[-1]
    d = att.internal_dim // h
    qh = _split(att.q_proj(q), h) * d**-0.5  # (N, h, T, d)
    rows = torch.einsum("nhtd,hdc->nhtc", qh, att.k_proj.weight.view(h, d, c)).flatten(1, 2)
    return rows.to(dtype), qh.to(dtype)


#: Per image-embedding tensor: what the decoder computes from its image tokens alone (:func:`_first_layer`).
_FIRST_LAYER: KeptBeside[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = KeptBeside()


def _first_layer(model: Model, image: torch.Tensor,
                 keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the decoder computes from the image tokens all prompts share, ``keys`` (1, HW, C), made from the
    embedding ``image``, float32: the first layer's token-to-image keys and values (2, 1, heads, HW, d), its
    image-to-token queries (heads, d, HW), and the tokens through the folded first transposed convolution of
    the upscaling (HW, 4 C1) (:func:`~samadapt.models.accel.sam_upscale.first_convolution`).

    They depend on the embedding and the weights alone, so they are kept beside the embedding tensor
    (changed weights or embedding values recompute).
    """
    dec = model.mask_decoder
    layer = next(iter(_blocks(dec)))
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    norms = [p for block in _blocks(dec) for p in block.layer_norm4.parameters()]
    params = (*(p for m in (t2i, i2t, dec.upscale_conv1) for p in m.parameters()), *norms,
              model.prompt_encoder.no_mask_embed.weight, model.shared_image_embedding.positional_embedding)
    key = (*tensor_identity(image), *(v for p in params for v in tensor_identity(p)))

    def compute() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pe, h = image_positional_embedding(model), t2i.num_attention_heads
        kv = torch.stack([_split(t2i.k_proj(keys + pe), h), _split(t2i.v_proj(keys), h)])
        return kv, _heads_first(i2t.q_proj(keys[0] + pe), h), keys[0] @ folded_weights(dec)[0]

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


def _tokens_to_image(att: Attention, scores: list[torch.Tensor], keys: list[torch.Tensor]) -> torch.Tensor:
    """Prompt tokens attend to each prompt's own image tokens ``keys`` (N of (HW, C)), given the scores
    (heads*T, HW) of each prompt's folded queries (:func:`_fold_queries`) against ``keys + pe``."""
    h, (ht, _hw), c, n = att.num_attention_heads, scores[0].shape, keys[0].shape[-1], len(keys)
    t, d = ht // h, att.internal_dim // h
    ctx = [torch.softmax(scores[p], dim=-1) @ keys[p] for p in range(n)]  # over the image
    wv, bv = att.v_proj.weight.view(h, d, c), att.v_proj.bias.view(1, 1, h, d)
    out = torch.einsum("nhtc,hdc->nthd", torch.stack(ctx).view(n, h, t, c).float(), wv) + bv  # weights sum to 1
    return _out_proj(att)(out.reshape(n, t, h * d))


def _image_to_tokens(model: nn.Module, att: Attention, norm: nn.LayerNorm, keys: torch.Tensor | list[torch.Tensor],
                     q: torch.Tensor, v: torch.Tensor, padding: torch.Tensor, dtype: torch.dtype,
                     shared: torch.Tensor | None, following: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Stage:
    """Image tokens (query input ``keys + pe``) attend to prompt tokens (N, T, C); the layer's
    LayerNorm follows. One prompt at a time (prompts spread over the cores): its attention update, the
    LayerNorm and the next attention's scores are computed while its image tokens are in the caches, one
    read and one write of them per layer.

    Scores are laid out (heads, T, HW) so the softmax over the few prompt tokens runs
    along a long contiguous axis.

    Args:
        keys: (1, HW, C) float32 image tokens all prompts share (``shared`` given) or each prompt's own,
            N of (HW, C) in ``dtype``, which are overwritten.
        padding: (N, T) 0 for tokens, -inf for padding.
        dtype: dtype of the result (each prompt's own image tokens).
        shared: the query projections (heads, d, HW) of shared image tokens (:func:`_first_layer`); None
            when ``keys`` are each prompt's own.
        following: the next token-to-image attention's folded queries, rows (N, R, C) and per head
            (N, heads, T, d) (:func:`_fold_queries`), and its projected positional embedding (heads, d, HW).
    """
    h, (n, t, c) = att.num_attention_heads, q.shape
    d = att.internal_dim // h
    kh = _split(att.k_proj(q), h) * d**-0.5  # (N, h, T, d)
    vh = _split(att.v_proj(v), h)
    bias = padding[:, None, :, None]  # (N, 1, T, 1)
    if isinstance(keys, torch.Tensor):  # shared image tokens: their projections are given
        assert shared is not None
        image, kq, positions = [keys[0].to(dtype)] * n, None, shared
    else:  # fold the prompt keys into the query weights; the positional part (with the query bias) apart
        image = keys
        kq = torch.einsum("nhtd,hdc->nhtc", kh, att.q_proj.weight.view(h, d, c)).reshape(n, h * t, c).to(dtype)
        kh, bias = kh.to(dtype), bias.to(dtype)
        positions = _projected_positions(model, att, "q", dtype)
    proj = _out_proj(att)
    wo = proj.weight.view(c, h, d)
    # Values through the output projection. Each head's weights sum to 1 over the tokens, so
    # the output bias rides on each head's values as bias / heads.
    values = torch.einsum("nhtd,chd->nhtc", vh, wo).add_(proj.bias / h).reshape(n, h * t, c)
    vo = values.to(dtype)
    rows, folded, next_positions = following

    def one(p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image[p]
        z = torch.bmm(kh[p], positions).add_(bias[p])  # (h, T, HW); float32 for shared tokens, as their projections
        if kq is not None:
            z.view(h * t, -1).addmm_(kq[p], x.T)
        w = torch.softmax(z, dim=1).view(h * t, -1).to(dtype)  # over the prompt tokens
        # each prompt's own tokens take the update in place (nothing reads them after it): no copy of them
        update = torch.addmm(x, w.T, vo[p]) if kq is None else x.addmm_(w.T, vo[p])
        new, _mean, rstd = torch.native_layer_norm(update, [c], norm.weight, norm.bias, norm.eps)
        return new, w, rstd, torch.bmm(folded[p], next_positions).view(h * t, -1).addmm_(rows[p], new.T)

    tokens, weights, rstd, scores = zip(*(one(p) for p in range(n)), strict=True)
    return Stage(list(tokens), list(weights), values, list(rstd), list(scores))


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


def join(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts)``, without the copy when there is one part (16 prompts' masks are 12 MB)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


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
    n = sparse.shape[0]
    # Each thread decodes a run of prompts (map_runs) in groups; the groups decoded at the same time keep their
    # own image tokens under GROUP_BYTES. The projections of the shared image tokens serve all of them (and the
    # next calls on this embedding).
    spread = worth_threads(keys[0])
    at_once = min(n, torch.get_num_threads()) if spread else 1
    group = max(1, GROUP_BYTES // (side * side * c * dtype.itemsize * at_once))
    shared = _first_layer(sam, image, keys)
    added = added_terms(sam.mask_decoder, high_res, side, dtype)  # once for all groups
    hq_dec = _hq_decoder(sam.mask_decoder)
    hq = (hq_dec, hq_features(hq_dec, image, vit_features, dtype)) if hq_dec is not None else None

    def run(prompts: range) -> list[tuple[torch.Tensor, torch.Tensor]]:
        starts = range(prompts.start, prompts.stop, group)
        return [_decode_group(sam, keys, sparse[s : min(s + group, prompts.stop)],
                              valid[s : min(s + group, prompts.stop)], multimask, dtype, shared, added, hq)
                for s in starts]

    with prompt_threads(n):
        parts = [part for parts_of_run in map_runs(run, n, spread) for part in parts_of_run]
    masks, ious = zip(*parts, strict=True)
    return join(list(masks)), join(list(ious))


def _decode_group(model: Model, keys: torch.Tensor, sparse: torch.Tensor, valid: torch.Tensor, multimask: bool,
                  dtype: torch.dtype, shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  added: tuple[torch.Tensor, torch.Tensor],
                  hq: tuple[SamHQMaskDecoder, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_sam` for one group of prompts.

    ``keys`` (1, HW, C) are the shared image tokens and ``shared`` their projections in the first layer
    (:func:`_first_layer`); ``hq`` SAM-HQ's decoder and its image-side mask features from
    :func:`~samadapt.models.accel.sam_hq_decoder.hq_features`.
    """
    dec = model.mask_decoder
    tr = dec.transformer
    n, side = sparse.shape[0], math.isqrt(keys.shape[1])
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
    stages: list[Stage] = []  # per layer, the prompts' image tokens after it
    for i, layer in enumerate(layers):
        if i == 0:  # the first layer reads the image tokens all prompts share
            att = _tokens_to_image_shared(layer.cross_attn_token_to_image, queries + tokens, shared[0])
        else:
            att = _tokens_to_image(layer.cross_attn_token_to_image, stages[-1].scores, stages[-1].tokens)
        queries = layer.layer_norm2(queries + att)
        queries = layer.layer_norm3(queries + layer.mlp(queries))
        # the next token-to-image attention's queries need only the prompt tokens: fold them now, so
        # that its scores are formed while the image tokens it reads are computed
        if i + 1 < len(layers):
            following = _self_attention_block(layers[i + 1], queries, tokens, valid)
            nxt = layers[i + 1].cross_attn_token_to_image
        else:
            following, nxt = queries, tr.final_attn_token_to_image
        rows, heads = _fold_queries(nxt, following + tokens, dtype)
        stages.append(_image_to_tokens(model, layer.cross_attn_image_to_token, layer.layer_norm4,
                                       stages[-1].tokens if stages else keys, queries + tokens, queries, padding,
                                       dtype, shared[1] if i == 0 else None,
                                       (rows, heads, _projected_positions(model, nxt, "k", dtype))))
        queries = following
    att = _tokens_to_image(tr.final_attn_token_to_image, stages[-1].scores, stages[-1].tokens)
    queries = tr.layer_norm_final_attn(queries + att)
    # SAM 2 answers a single-mask request by its stability rule, which needs all four masks
    dynamic = not multimask and sam2 is not None and sam2.dynamic_multimask_via_stability
    tokens_sam = len(dec.output_hypernetworks_mlps)  # SAM's mask tokens (SAM-HQ counts its own in num_mask_tokens)
    chosen = range(1, tokens_sam) if multimask else range(tokens_sam if dynamic else 1)
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[:, iou_at + 1 + i]) for i in chosen], dim=1)
    iou = dec.iou_prediction_head(queries[:, iou_at])[:, list(chosen)]
    conv1 = (shared[2].to(dtype), first_convolution(dec, stages, dtype))
    if hq is None:
        masks = upscale_masks(dec, *conv1, hyper, side, added)
    else:
        hq_dec, hq_image = hq
        features = _workspace("hq", (n, side, 2, 2, 4 * side, hyper.shape[-1]), dtype, keys.device)
        masks = upscale_masks(dec, *conv1, hyper, side, added, features)
        hq_rows = hq_dec.hq_mask_mlp(queries[:, iou_at + 1 + tokens_sam])  # (N, C/8)
        return add_hq_masks(hq_dec, masks, iou, features.view(n, 4 * side, 4 * side, -1), hq_image, hq_rows,
                            multimask)
    if sam2 is not None and dynamic:
        masks, iou = sam2._dynamic_multimask_via_stability(masks[None], iou[None])
        masks, iou = masks[0], iou[0]
    return masks, iou
