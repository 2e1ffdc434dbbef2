"""A faster, numerically equivalent forward pass of SAM's (and SAM 2's) mask decoder for many prompts at once.

transformers' ``SamModel.forward`` decodes N prompts by copying the image embedding N
times and running every projection over all 4096 image tokens for each prompt. The
result depends only on each prompt's own tokens, so most of that work can be shared or
reordered without changing the arithmetic beyond rounding:

- the positional embedding of the image grid, and its projections by each attention (per head),
  are computed once per model and kept; a prompt's positional scores are products per head;
- in the first layer the image tokens are the same for every prompt, so their key,
  value and query projections are computed once per embedding and kept beside it;
- afterwards each prompt has its own image tokens, but they differ from the shared ones by a few
  attention updates of rank heads*T (T prompt tokens, about 7-9) and per-token LayerNorm scales:
  every later attention's scores and values are read through that low-rank form
  (:mod:`samadapt.models.accel.sam_fold`), products with 72-145 rows instead of 256 channels;
  each prompt's tokens themselves are only updated (in place) and normalised;
- prompts with different numbers of points share one call: shorter ones are padded with
  tokens that are masked out of every attention, so they change nothing (unlike
  transformers' ``-10`` label, which zeroes a padding token but still lets it be attended); the image
  side of a prompt is computed for its own tokens only;
- the upscaling (:mod:`samadapt.models.accel.sam_upscale`) reads the last tokens the same way, with its
  LayerNorm folded in, and runs a prompt at a time in blocks that stay in the caches;
- with at least as many prompts as cores, each core decodes a run of whole prompts
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
from typing import TYPE_CHECKING, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from samadapt.models.accel import sam_fold
from samadapt.models.accel.cpu import keep_freed_memory
from samadapt.models.accel.fast_encoder import tensor_identity
from samadapt.models.accel.kept import KeptBeside, KeptPerModule, weights_key
from samadapt.models.accel.parallel import map_runs, prompt_threads, worth_threads
from samadapt.models.accel.sam_fold import Trail, layer_norms
from samadapt.models.accel.sam_hq_decoder import add_hq_masks, hq_features, workspace
from samadapt.models.accel.sam_upscale import added_terms, first_convolution, folded_weights, upscale_masks
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


def _fold_queries(att: Attention, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-token queries (N, T, C) of a token-to-image attention folded into its key weights: (N, heads*T, C)
    rows whose products with the image tokens are the scores' image part (the key bias adds the same to every
    score of a query: the softmax over the image ignores it), and the (N, heads, T, d) scaled queries."""
    h, c = att.num_attention_heads, q.shape[-1]
    d = att.internal_dim // h
    qh = _split(att.q_proj(q), h) * d**-0.5  # (N, h, T, d)
    return torch.einsum("nhtd,hdc->nhtc", qh, att.k_proj.weight.view(h, d, c)).flatten(1, 2), qh


class ImageSide(NamedTuple):
    """What the decoder computes from the image tokens all prompts share, ``Y_0``, kept beside the embedding
    (:func:`_image_side`), in the pass's dtype unless said."""

    tokens: torch.Tensor  #: (HW, C) ``Y_0``: the embedding's tokens with the dense (no-mask) embedding added
    kv: torch.Tensor  #: (2, 1, heads, HW, d) float32 the first token-to-image attention's keys and values
    queries: torch.Tensor  #: (heads, d, HW) float32 the first image-to-token attention's queries
    keys: list[torch.Tensor]  #: per later token-to-image attention (layer 1 .. L-1, final), (heads, d, HW)
    values: list[torch.Tensor]  #: per later token-to-image attention, (heads, HW, d)
    later_queries: list[torch.Tensor]  #: per later image-to-token attention (layer 1 .. L-1), (heads, d, HW)
    convolution: torch.Tensor  #: (HW, 4 C1) the upscaling's first convolution, folded back (``Y_0 H_0``)


#: Per image-embedding tensor: what the decoder computes from its image tokens alone (:func:`_image_side`).
_IMAGE_SIDE: KeptBeside[ImageSide] = KeptBeside()


def _later_attentions(model: Model) -> list[tuple[Attention, Attention | None]]:
    """Per level l = 1 .. L: the token-to-image attention that reads the tokens after layer l, and the
    image-to-token attention that does (None for the last)."""
    layers, final = list(_blocks(model.mask_decoder)), model.mask_decoder.transformer.final_attn_token_to_image
    return [(b.cross_attn_token_to_image, b.cross_attn_image_to_token) for b in layers[1:]] + [(final, None)]


def _image_side(model: Model, image: torch.Tensor, dtype: torch.dtype) -> ImageSide:
    """:class:`ImageSide` of the embedding ``image`` (1, C, h, w).

    The later attentions read each prompt's own tokens through :mod:`~samadapt.models.accel.sam_fold`, whose
    part from the shared tokens, ``Y_0 H_0`` per head, is computed here. All depend on the embedding and
    the weights alone, so they are kept beside the embedding tensor (changed weights or embedding values
    recompute).
    """
    dec = model.mask_decoder
    layer = next(iter(_blocks(dec)))
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    params = (*dec.transformer.parameters(), *dec.upscale_conv1.parameters(), model.prompt_encoder.no_mask_embed.weight,
              model.shared_image_embedding.positional_embedding)
    key = (dtype, *tensor_identity(image), *(v for p in params for v in tensor_identity(p)))
    norms = layer_norms(model.mask_decoder)

    def compute() -> ImageSide:
        dense = model.prompt_encoder.no_mask_embed.weight.view(1, 1, -1)
        keys = image.flatten(2).transpose(1, 2) + dense  # (1, HW, C)
        pe, h = image_positional_embedding(model), t2i.num_attention_heads
        kv = torch.stack([_split(t2i.k_proj(keys + pe), h), _split(t2i.v_proj(keys), h)])
        later = list(enumerate(_later_attentions(model), start=1))
        folds = [(level, w) for name in ("k_proj", "v_proj") for level, (att, _) in later
                 for w in [getattr(att, name).weight]]
        folds += [(level, att.q_proj.weight) for level, (_, att) in later if att is not None]
        weights = [sam_fold.fold_chain(norms[:level], w.detach().T)[0][0] for level, w in folds]
        weights.append(folded_weights(dec)[0])
        # one product of the shared tokens with every folded weight, in the pass's dtype (its result's)
        products = (keys[0].to(dtype) @ torch.cat(weights, dim=1).to(dtype)).split([w.shape[1] for w in weights], 1)
        per_head = [_heads_first(x, h) for x in products[:-1]]
        n = len(later)
        return ImageSide(keys[0].to(dtype), kv, _heads_first(i2t.q_proj(keys[0] + pe), h), per_head[:n],
                         [x.transpose(1, 2) for x in per_head[n : 2 * n]], per_head[2 * n :],
                         products[-1].contiguous())

    return _IMAGE_SIDE.get(image, key, (model,), compute)


def _tokens_to_image_shared(att: Attention, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Prompt tokens (N, T, C) attend to the image tokens all prompts share, given their key and value
    projections ``kv`` (:class:`ImageSide`)."""
    h, (n, t, _c) = att.num_attention_heads, q.shape
    d = att.internal_dim // h
    qh = _split(att.q_proj(q), h)  # (N, h, T, d)
    out = F.scaled_dot_product_attention(qh.transpose(0, 1).reshape(1, h, n * t, d), kv[0], kv[1])
    out = out.view(h, n, t, d).permute(1, 2, 0, 3)
    return _out_proj(att)(out.reshape(n, t, h * d))


def _tokens_to_image(model: Model, att: Attention, q: torch.Tensor, trail: Trail, shared: tuple[torch.Tensor,
                     torch.Tensor]) -> torch.Tensor:
    """Prompt tokens (N, T, C) attend to each prompt's own image tokens after the trail's level l, read through
    the trail (:mod:`~samadapt.models.accel.sam_fold`); ``shared``: the keys and values of ``Y_0`` through the
    folded weights (:class:`ImageSide`)."""
    h, (n, t, _c), dtype = att.num_attention_heads, q.shape, trail.rows.dtype
    d = att.internal_dim // h
    rows, qh = _fold_queries(att, q)
    scores = sam_fold.folded_scores(trail, layer_norms(model.mask_decoder), rows, qh.to(dtype), shared[0],
                                    _projected_positions(model, att, "k", dtype), constant=False)
    probs = [torch.softmax(s, dim=-1) for s in scores]  # over the image
    chain = sam_fold.value_chain(model.mask_decoder, att, trail.level)
    ctx = sam_fold.folded_context(trail, probs, shared[1], sam_fold.right_side(chain, trail))  # (N, h, T, d)
    out = ctx + (chain[2] + att.v_proj.bias).view(1, h, 1, d)  # the weights sum to 1
    return _out_proj(att)(out.transpose(1, 2).reshape(n, t, h * d))


def _image_to_tokens(model: Model, att: Attention, norm: nn.LayerNorm, keys: torch.Tensor | list[torch.Tensor],
                     q: torch.Tensor, v: torch.Tensor, padding: list[torch.Tensor | None], trail: Trail,
                     shared: torch.Tensor, keep: bool = True) -> list[torch.Tensor]:
    """Image tokens (query input ``keys + pe``) attend to prompt tokens (N, T, C); the layer's LayerNorm
    follows. Adds the layer to the ``trail`` and returns each prompt's new image tokens (HW, C) if ``keep`` (the
    last layer's are not read: their memory is reused from one prompt to the next). Scores are laid out
    (heads, T, HW) so the softmax over the few prompt tokens runs along a long contiguous axis.

    Args:
        keys: (HW, C) image tokens all prompts share, or each prompt's own, N of (HW, C), in the
            trail's dtype, which are overwritten.
        padding: per prompt, (T, 1) 0 for tokens and -inf for padding where padding is among its own tokens
            (the trail's), else None.
        shared: for the shared tokens, the query projections (heads, d, HW) of them (:class:`ImageSide`); for
            each prompt's own, ``Y_0`` through the folded query weights (heads, d, HW).
    """
    h, (n, t, c), dtype = att.num_attention_heads, q.shape, trail.rows.dtype
    d = att.internal_dim // h
    kh = _split(att.k_proj(q), h) * d**-0.5  # (N, h, T, d)
    vh = _split(att.v_proj(v), h)
    own = isinstance(keys, list)
    if isinstance(keys, torch.Tensor):  # shared image tokens: their projections are given
        image = [keys] * n
        scores = [torch.bmm(kh[p, :, : trail.tokens[p]], shared) for p in range(n)]  # float32, as the projections
    else:  # through the trail: the prompt keys folded into the query weights (the positions carry the query bias)
        image = keys
        kq = torch.einsum("nhtd,hdc->nhtc", kh, att.q_proj.weight.view(h, d, c)).reshape(n, h * t, c)
        scores = sam_fold.folded_scores(trail, layer_norms(model.mask_decoder), kq, kh.to(dtype), shared,
                                        _projected_positions(model, att, "q", dtype), constant=True)
    for s, bias in zip(scores, padding, strict=True):
        if bias is not None:
            s.view(h, t, -1).add_(bias.to(s.dtype))
    proj = _out_proj(att)
    wo = proj.weight.view(c, h, d)
    # Values through the output projection. Each head's weights sum to 1 over the tokens, so
    # the output bias rides on each head's values as bias / heads.
    values = torch.einsum("nhtd,chd->nhtc", vh, wo).add_(proj.bias / h).reshape(n, h * t, c)
    vo = values.to(dtype)
    trail.next_layer(values)
    tokens = []
    for p in range(n):
        x, t_p = image[p], trail.tokens[p]
        w = torch.softmax(scores[p].view(h, t_p, -1), dim=1).view(h * t_p, -1).to(dtype)  # over the prompt tokens
        v_p = trail.own(vo[p], p)
        # each prompt's own tokens take the update in place (nothing reads them after it): no copy of them
        update = x.addmm_(w.T, v_p) if own else torch.addmm(x, w.T, v_p)
        new, _mean, rstd = torch.native_layer_norm(update, [c], norm.weight, norm.bias, norm.eps)
        trail.add(p, w, rstd)
        if keep:
            tokens.append(new)
    return tokens


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
    keep_freed_memory()  # the blocks of a few MB per prompt reused, not faulted in anew for every one
    sam, (c, side) = _sam(model), (image.shape[1], image.shape[-1])
    dtype, n = (torch.bfloat16 if precision == "bf16" else torch.float32), sparse.shape[0]
    # Each thread decodes a run of prompts (map_runs) in groups; the groups decoded at the same time keep their
    # own image tokens under GROUP_BYTES. What is computed from the shared image tokens serves them all.
    shared = _image_side(sam, image, dtype)
    spread = worth_threads(shared.tokens)
    at_once = min(n, torch.get_num_threads()) if spread else 1
    group = max(1, GROUP_BYTES // (side * side * c * dtype.itemsize * at_once))
    added = added_terms(sam.mask_decoder, high_res, side, dtype)  # once for all groups
    hq_dec = _hq_decoder(sam.mask_decoder)
    hq = (hq_dec, hq_features(hq_dec, image, vit_features, dtype)) if hq_dec is not None else None

    def run(prompts: range) -> list[tuple[torch.Tensor, torch.Tensor]]:
        starts = range(prompts.start, prompts.stop, group)
        return [_decode_group(sam, sparse[s : min(s + group, prompts.stop)],
                              valid[s : min(s + group, prompts.stop)], multimask, dtype, shared, added, hq)
                for s in starts]

    with prompt_threads(n):
        parts = [part for parts_of_run in map_runs(run, n, spread) for part in parts_of_run]
    masks, ious = zip(*parts, strict=True)
    return join(list(masks)), join(list(ious))


def _decode_group(model: Model, sparse: torch.Tensor, valid: torch.Tensor, multimask: bool,
                  dtype: torch.dtype, shared: ImageSide, added: tuple[torch.Tensor, torch.Tensor],
                  hq: tuple[SamHQMaskDecoder, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_sam` for one group of prompts.

    ``shared``: what is computed from the image tokens all prompts share (:func:`_image_side`); ``hq``: SAM-HQ's
    decoder and its image-side mask features from :func:`~samadapt.models.accel.sam_hq_decoder.hq_features`.
    """
    dec = model.mask_decoder
    tr = dec.transformer
    keys = shared.tokens
    n, side = sparse.shape[0], math.isqrt(keys.shape[0])
    # SAM 2 puts an object-score token before SAM's IoU and mask tokens
    sam2 = _sam2_decoder(dec)
    first = [sam2.obj_score_token.weight] if sam2 is not None else []
    iou_at = len(first)
    last = [hq[0].hq_token.weight] if hq is not None else []  # SAM-HQ's token follows the mask tokens
    out_tokens = torch.cat([*first, dec.iou_token.weight, dec.mask_tokens.weight, *last]).expand(n, -1, -1)
    tokens = torch.cat([out_tokens, sparse], dim=1)
    valid = torch.cat([torch.ones(n, out_tokens.shape[1], dtype=torch.bool, device=valid.device), valid], dim=1)
    layers = list(_blocks(dec))
    heads = layers[0].cross_attn_image_to_token.num_attention_heads
    # each prompt's own tokens, when its padding is all at the end (as models.sam pads): the rest is not computed
    counts = valid.sum(1).tolist()
    own_tokens = [k if bool(valid[p, :k].all()) else valid.shape[1] for p, k in enumerate(counts)]
    padding = [None if k == t else torch.zeros(t, 1, dtype=sparse.dtype, device=sparse.device).masked_fill_(
        ~valid[p, :, None], float("-inf")) for p, (k, t) in enumerate(zip(counts, own_tokens, strict=True))]
    trail = Trail(keys.shape[0], heads, own_tokens, tokens.shape[1], len(layers), dtype, keys.device)
    image: torch.Tensor | list[torch.Tensor] = keys  # the prompts' image tokens after each layer
    queries = tokens
    for i, layer in enumerate(layers):
        queries = _self_attention_block(layer, queries, tokens, valid)
        t2i = layer.cross_attn_token_to_image
        if i == 0:  # the first layer reads the image tokens all prompts share
            att = _tokens_to_image_shared(t2i, queries + tokens, shared.kv)
        else:
            att = _tokens_to_image(model, t2i, queries + tokens, trail, (shared.keys[i - 1], shared.values[i - 1]))
        queries = layer.layer_norm2(queries + att)
        queries = layer.layer_norm3(queries + layer.mlp(queries))
        image = _image_to_tokens(model, layer.cross_attn_image_to_token, layer.layer_norm4, image, queries + tokens,
                                 queries, padding, trail, shared.queries if i == 0 else shared.later_queries[i - 1],
                                 keep=i + 1 < len(layers))
    att = _tokens_to_image(model, tr.final_attn_token_to_image, queries + tokens, trail,
                           (shared.keys[-1], shared.values[-1]))
    queries = tr.layer_norm_final_attn(queries + att)
    # SAM 2 answers a single-mask request by its stability rule, which needs all four masks
    dynamic = not multimask and sam2 is not None and sam2.dynamic_multimask_via_stability
    tokens_sam = len(dec.output_hypernetworks_mlps)  # SAM's mask tokens (SAM-HQ counts its own in num_mask_tokens)
    chosen = range(1, tokens_sam) if multimask else range(tokens_sam if dynamic else 1)
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[:, iou_at + 1 + i]) for i in chosen], dim=1)
    iou = dec.iou_prediction_head(queries[:, iou_at])[:, list(chosen)]
    conv1 = (shared.convolution, first_convolution(dec, trail))
    if hq is None:
        masks = upscale_masks(dec, *conv1, hyper, side, added)
    else:
        hq_dec, hq_image = hq
        features = workspace("hq", (n, side, 2, 2, 4 * side, hyper.shape[-1]), dtype, keys.device)
        masks = upscale_masks(dec, *conv1, hyper, side, added, features)
        hq_rows = hq_dec.hq_mask_mlp(queries[:, iou_at + 1 + tokens_sam])  # (N, C/8)
        return add_hq_masks(hq_dec, masks, iou, features.view(n, 4 * side, 4 * side, -1), hq_image, hq_rows,
                            multimask)
    if sam2 is not None and dynamic:
        masks, iou = sam2._dynamic_multimask_via_stability(masks[None], iou[None])
        masks, iou = masks[0], iou[0]
    return masks, iou
