"""A faster, numerically equivalent forward pass of SAM's mask decoder for many prompts at once.

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
  in a channels-last sub-pixel layout, and only the masks asked for are formed.

Only the plain SAM decoder (family "sam") takes this path; modules replaced by an adapter
(anything but plain ``nn.Linear`` / ``nn.ConvTranspose2d`` / ``nn.LayerNorm``) fall back to
transformers' forward, as do SAM-HQ and SAM 2.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

#: Prompts per pass through the decoder: large enough to share the first layer's work,
#: small enough that the per-prompt image tokens (N x 4096 x 256 floats) stay near 64 MB.
CHUNK = 16

_POSITIONAL: weakref.WeakKeyDictionary[nn.Module, tuple[int, torch.Tensor]] = weakref.WeakKeyDictionary()


def supported(model: nn.Module) -> bool:
    """True when the model's mask decoder is transformers' plain SAM decoder (no adapter modules in it)."""
    dec = getattr(model, "mask_decoder", None)
    if dec is None or type(model).__name__ != "SamModel" or not hasattr(dec, "upscale_conv1"):
        return False
    for module in dec.modules():  # an adapter's own layers (LoRA ...) need their own forward
        if not type(module).__module__.startswith(("torch.nn.", "transformers.")):
            return False
    return True


def image_positional_embedding(model: nn.Module) -> torch.Tensor:
    """(HW, C) positional embedding of the image grid, computed once per model and its weights' version."""
    param = model.shared_image_embedding.positional_embedding
    found = _POSITIONAL.get(model)
    if found is None or found[0] != param._version or found[1].device != param.device:
        pe = model.get_image_wide_positional_embeddings()[0]  # (C, h, w)
        found = (param._version, pe.flatten(1).transpose(0, 1).contiguous())
        _POSITIONAL[model] = found
    return found[1]


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, heads, L, D / heads)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _token_self_attention(att: nn.Module, q: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Attention among prompt tokens (N, T, C); padding tokens are never attended to."""
    h = att.num_attention_heads
    out = F.scaled_dot_product_attention(_split(att.q_proj(q), h), _split(att.k_proj(q), h),
                                         _split(att.v_proj(v), h), attn_mask=valid[:, None, None, :])
    return att.out_proj(out.transpose(1, 2).flatten(2))


def _scores(rows: torch.Tensor, keys: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """(N, R, HW) products of R vectors per prompt with its image tokens plus positional embedding.

    ``rows @ (keys + pe).T`` without materialising ``keys + pe``: the image product is taken
    as (HW, R) and transposed while the positional part is added, which copies R rows, not C.
    """
    n, r, c = rows.shape
    image = torch.bmm(keys, rows.transpose(1, 2))  # (N, HW, R)
    return (rows.reshape(-1, c) @ pe.T).view(n, r, -1).add_(image.transpose(1, 2))


def _tokens_to_image(att: nn.Module, q: torch.Tensor, keys: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Prompt tokens (N, T, C) attend to image tokens ``keys`` (B, HW, C), B = 1 (shared) or N.

    The image side's key input is ``keys + pe`` (pe: (HW, C) positional embedding).
    """
    h, (n, t, c) = att.num_attention_heads, q.shape
    d = att.internal_dim // h
    qh = _split(att.q_proj(q), h)  # (N, h, T, d)
    if keys.shape[0] == 1:  # shared image tokens: project them once, queries of all prompts in one call
        kh, vh = _split(att.k_proj(keys + pe), h), _split(att.v_proj(keys), h)
        out = F.scaled_dot_product_attention(qh.transpose(0, 1).reshape(1, h, n * t, d), kh, vh)
        out = out.view(h, n, t, d).permute(1, 2, 0, 3)
        return att.out_proj(out.reshape(n, t, h * d))
    # Per-prompt image tokens: fold each query into the key weights. The key bias adds the
    # same number to every score of a query, which the softmax ignores; the positional part
    # is a product of its own rather than a sum over all image tokens of every prompt.
    wk = att.k_proj.weight.view(h, d, c)
    qk = torch.einsum("nhtd,hdc->nhtc", qh * d**-0.5, wk).reshape(n, h * t, c)
    scores = _scores(qk, keys, pe)
    weights = torch.softmax(scores, dim=-1)  # (N, h*T, HW), over the image
    ctx = torch.bmm(weights, keys).view(n, h, t, c)  # weighted image tokens
    wv, bv = att.v_proj.weight.view(h, d, c), att.v_proj.bias.view(1, 1, h, d)
    out = torch.einsum("nhtc,hdc->nthd", ctx, wv) + bv  # the rows of weights sum to 1
    return att.out_proj(out.reshape(n, t, h * d))


def _image_to_tokens(att: nn.Module, keys: torch.Tensor, pe: torch.Tensor, q: torch.Tensor, v: torch.Tensor,
                     padding: torch.Tensor) -> torch.Tensor:
    """Image tokens (B, HW, C) (query input ``keys + pe``) attend to prompt tokens (N, T, C).

    Scores are laid out (N, heads, T, HW) so the softmax over the few prompt tokens runs
    along a long contiguous axis.

    Args:
        padding: (N, T) 0 for tokens, -inf for padding.

    Returns:
        ``keys`` plus the attention's update, (N, HW, C).
    """
    h, (n, t, c) = att.num_attention_heads, q.shape
    d = att.internal_dim // h
    kh = _split(att.k_proj(q), h) * d**-0.5  # (N, h, T, d)
    vh = _split(att.v_proj(v), h)
    bias = padding[:, None, :, None]  # (N, 1, T, 1)
    if keys.shape[0] == 1:  # shared image tokens: project them once
        qh = att.q_proj(keys[0] + pe).view(-1, h, d).permute(1, 2, 0)  # (h, d, HW)
        scores = torch.bmm(kh.transpose(0, 1).reshape(h, n * t, d), qh)  # (h, N*T, HW), heads first
        scores = scores.view(h, n, t, -1).transpose(0, 1).add(bias)  # (N, h, T, HW)
    else:  # fold the prompt keys into the query weights
        wq, bq = att.q_proj.weight.view(h, d, c), att.q_proj.bias.view(1, h, 1, d)
        kq = torch.einsum("nhtd,hdc->nhtc", kh, wq).reshape(n, h * t, c)
        bias = bias + (kh * bq).sum(-1, keepdim=True)
        scores = _scores(kq, keys, pe).view(n, h, t, -1).add_(bias)
    weights = torch.softmax(scores, dim=2).view(n, h * t, -1)
    wo = att.out_proj.weight.view(c, h, d)
    vo = torch.einsum("nhtd,chd->nhtc", vh, wo).reshape(n, h * t, c)  # values through the output projection
    # keys + update in place: the bias and the residual go in first, the product accumulates onto them
    out = (keys + att.out_proj.bias).expand(n, -1, -1).contiguous()
    return out.baddbmm_(weights.transpose(1, 2), vo)


def _upscale_masks(dec: nn.Module, keys: torch.Tensor, hyper: torch.Tensor, side: int) -> torch.Tensor:
    """Mask logits (N, M, 4 side, 4 side) from image tokens (N, side*side, C) and hypernetwork rows (N, M, C/8)."""
    n, m = keys.shape[0], hyper.shape[1]
    conv1, conv2, norm = dec.upscale_conv1, dec.upscale_conv2, dec.upscale_layer_norm
    c1, c2 = conv1.out_channels, conv2.out_channels
    # A 2x2 stride-2 transposed convolution maps each pixel to its 2x2 children independently.
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1)
    up = torch.addmm(conv1.bias.repeat(4), keys.reshape(-1, keys.shape[-1]), w1).view(-1, c1)
    up = F.gelu(F.layer_norm(up, (c1,), norm.weight, norm.bias, norm.eps))
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    up = F.gelu(torch.addmm(conv2.bias.repeat(4), up, w2)).view(n, -1, c2)
    masks = torch.bmm(up, hyper.transpose(1, 2))  # (N, pixels in sub-pixel order, M)
    # Sub-pixel order is (row, col, a1, b1, a2, b2): output row = 4 row + 2 a1 + a2.
    masks = masks.view(n, side, side, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(n, m, 4 * side, 4 * side)


def decode_sam(model: nn.Module, image: torch.Tensor, sparse: torch.Tensor, valid: torch.Tensor,
               multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode N objects on one image embedding with SAM's mask decoder.

    Args:
        model: a transformers ``SamModel`` for which :func:`supported` is True.
        image: (1, C, h, w) image embedding.
        sparse: (N, T, C) prompt-token embeddings from the prompt encoder, padded to a common T.
        valid: (N, T) bool, False for padding tokens.
        multimask: return the 3 candidate masks (else the single-mask output).

    Returns:
        Low-resolution logits (N, M, 4h, 4w) and predicted IoUs (N, M), M = 3 or 1.
    """
    dec = model.mask_decoder
    tr = dec.transformer
    n, c = sparse.shape[0], image.shape[1]
    side = image.shape[-1]
    dense = model.prompt_encoder.no_mask_embed.weight.view(1, 1, c)
    keys = image.flatten(2).transpose(1, 2) + dense  # (1, HW, C), shared until the first update
    pe = image_positional_embedding(model)
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight]).expand(n, -1, -1)
    tokens = torch.cat([out_tokens, sparse], dim=1)
    valid = torch.cat([torch.ones(n, out_tokens.shape[1], dtype=torch.bool, device=valid.device), valid], dim=1)
    padding = torch.zeros(valid.shape, dtype=sparse.dtype, device=sparse.device).masked_fill_(~valid, float("-inf"))
    queries = tokens
    for layer in tr.layers:
        if layer.skip_first_layer_pe:
            queries = layer.layer_norm1(_token_self_attention(layer.self_attn, queries, queries, valid))
        else:
            q = queries + tokens
            queries = layer.layer_norm1(queries + _token_self_attention(layer.self_attn, q, queries, valid))
        att = _tokens_to_image(layer.cross_attn_token_to_image, queries + tokens, keys, pe)
        queries = layer.layer_norm2(queries + att)
        queries = layer.layer_norm3(queries + layer.mlp(queries))
        keys = layer.layer_norm4(_image_to_tokens(layer.cross_attn_image_to_token, keys, pe, queries + tokens,
                                                  queries, padding))
    att = _tokens_to_image(tr.final_attn_token_to_image, queries + tokens, keys, pe)
    queries = tr.layer_norm_final_attn(queries + att)
    chosen = range(1, dec.num_mask_tokens) if multimask else range(1)
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[:, 1 + i]) for i in chosen], dim=1)
    iou = dec.iou_prediction_head(queries[:, 0])[:, list(chosen)]
    return _upscale_masks(dec, keys, hyper, side), iou
