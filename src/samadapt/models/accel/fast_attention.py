"""Fused attention for the SAM and SAM-HQ image encoders (ViT with relative positions).

transformers' SAM ViT attention adds a decomposed relative-position bias to the attention
scores. Both of its implementations build that bias for the whole layer as a
(batch, heads, tokens, tokens) tensor by broadcasting; in a global-attention layer of
ViT-B at 1024 px that is 200 M freshly allocated elements per image, and on a CPU the
broadcast and the page faults of the fresh memory cost more than the attention itself.

Here the bias is built differently, the result being the same sum:

* windowed layers (few tokens): the bias is one matrix product, ``[rel_h, rel_w] @ onehot``,
  where the one-hot matrix picks each key's row and column term;
* global layers (many tokens) in bf16 on a CPU with AMX: the bias is folded into the dot
  product. Each query gets its H row terms and W column terms appended, each key the matching
  one-hot code of its row and column, so ``q' . k' = scale * q . k + bias`` and flash attention
  never reads a bias at all. CPU flash attention wants V's head size equal to Q's, so V is
  zero-padded; on AMX the extra work costs less than reading a 400 MB bias per layer (ViT-B at
  1024 px: 1.04-1.10 s against 1.19-1.21 s per image on a 2-core Xeon);
* global layers in bf16 on a CPU without AMX (AVX-512 BF16 only): the folded product does three
  times the attention's arithmetic, and torch's CPU flash attention runs its small blocks at
  under half the matmul rate there. The scores are computed one image row of queries at a
  time instead: ``q k^T`` and ``p v`` as oneDNN bf16 matrix products, the row and column terms
  added in place, softmax in between (as transformers does under autocast). ViT-B at 1024 px on
  a 2-core AMD EPYC (Zen 4): 0.32 s per global layer against 0.85 s folded and 0.49 s with the
  row-chunked bias below;
* global layers in fp32, where the wider dot product costs more than the bias (4.9 s against
  4.3 s per ViT-B image): queries are taken some image rows at a time (up to
  :data:`CHUNK_BYTES` of bias), the bias of those rows is written into a buffer each thread
  keeps and reuses, and handed to
  :func:`torch.nn.functional.scaled_dot_product_attention` with the rows' queries, so the
  full bias never exists.

The forward is installed per module instance; while gradients are being recorded (training
through the encoder), or while torch.compile / the ONNX exporter trace the model, the module's
own forward runs: the buffer reuse is for eager inference only.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers.models.sam.modeling_sam import SamVisionAttention
    from transformers.models.sam_hq.modeling_sam_hq import SamHQVisionAttention

#: Layers with at most this many tokens build their whole bias at once; larger ones go by rows.
WHOLE_BIAS_TOKENS = 1024
#: Bytes of bias per chunk of query rows; bounds the buffer each thread keeps and reuses.
#: Fewer, larger chunks run faster (SDPA parallelises over more query blocks per call); a fresh
#: buffer per call would cost page faults (tens of ms per 100 MB here), hence the reuse.
CHUNK_BYTES = 96 * 2**20
#: dtypes whose global layers fold the bias into the dot product instead of building it by rows.
FOLD_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16,)
#: Query rows of the image per chunk of :func:`scored_attention` (ViT-B: one row, 64 queries, was fastest).
SCORE_ROWS = 1


def _amx() -> bool:
    from samadapt.models.accel.cpu import cpu_info

    return cpu_info().amx


#: dtypes whose global layers compute their scores by query rows (:func:`scored_attention`); tried before
#: FOLD_DTYPES. bf16 on CPUs without AMX; with AMX the folded flash attention is faster.
SCORES_DTYPES: tuple[torch.dtype, ...] = () if _amx() else (torch.bfloat16,)


def global_attention_kind(dtype: torch.dtype) -> str:
    """How a global (large) layer's attention runs in ``dtype``: "scores", "folded" or "rows"."""
    return "scores" if dtype in SCORES_DTYPES else "folded" if dtype in FOLD_DTYPES else "rows"

_local = threading.local()


def _bias_buffer(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A (reused, per-thread) uninitialised buffer of ``shape`` in ``like``'s dtype and device."""
    key = (like.dtype, like.device)
    buffers = _local.__dict__.setdefault("buffers", {})
    numel = 1
    for n in shape:
        numel *= n
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            buf = buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)


def _rel_terms(module: SamVisionAttention | SamHQVisionAttention, query: torch.Tensor, height: int,
               width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column position terms of each query: (B, nh, H, W, H) and (B, nh, H, W, W)."""
    b, nh = query.shape[:2]
    rel_h = module.get_rel_pos(height, height, module.rel_pos_h).to(query.dtype)  # (H, H, C)
    rel_w = module.get_rel_pos(width, width, module.rel_pos_w).to(query.dtype)  # (W, W, C)
    q = query.reshape(b, nh, height, width, -1)
    return torch.einsum("bnhwc,hkc->bnhwk", q, rel_h), torch.einsum("bnhwc,wkc->bnhwk", q, rel_w)


def _onehot_keys(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(H + W, H * W): column j has a 1 at key j's row and at H + key j's column."""
    rows = torch.eye(height, dtype=like.dtype, device=like.device).repeat_interleave(width, dim=1)
    cols = torch.eye(width, dtype=like.dtype, device=like.device).repeat(1, height)
    return torch.cat([rows, cols], dim=0)


def relpos_attention(module: SamVisionAttention | SamHQVisionAttention, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Softmax attention with SAM's decomposed relative-position bias, without the full bias.

    Args:
        module: the SAM (or SAM-HQ) vision attention module (for ``get_rel_pos`` and its tables).
        query, key, value: (B, nh, H * W, C) each, of one dtype.
        height, width: the token grid, H and W.

    Returns:
        (B, nh, H * W, C), the same as eager attention with the bias added to the scores.
    """
    b, nh, n, _ = query.shape
    rel_h, rel_w = _rel_terms(module, query, height, width)
    if n <= WHOLE_BIAS_TOKENS:
        rel = torch.cat([rel_h, rel_w], dim=-1).reshape(b, nh, n, height + width)
        bias = rel @ _onehot_keys(height, width, query)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    kind = global_attention_kind(query.dtype)
    if kind == "scores":
        return scored_attention(query, key, value, rel_h, rel_w)
    if kind == "folded":
        return folded_attention(query, key, value, rel_h, rel_w)
    rows = max(1, min(height, CHUNK_BYTES // (query.element_size() * b * nh * width * n)))
    out = torch.empty_like(query)
    buf = _bias_buffer((b, nh, rows, width, height, width), query)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        bias = buf[:, :, : r1 - r0]
        torch.add(rel_h[:, :, r0:r1, :, :, None], rel_w[:, :, r0:r1, :, None, :], out=bias)
        s0, s1 = r0 * width, r1 * width
        out[:, :, s0:s1] = F.scaled_dot_product_attention(
            query[:, :, s0:s1], key, value, attn_mask=bias.view(b, nh, s1 - s0, n)
        )
    return out


def scored_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """Attention with the decomposed bias, its scores made :data:`SCORE_ROWS` image rows of queries at a time.

    Args and returns as :func:`folded_attention`. Each chunk's scores (B, nh, rows * W, H * W)
    are one matrix product in the inputs' dtype; the row and column terms are added in place and
    the softmax's probabilities multiply V into the output.
    """
    b, nh, n, c = query.shape
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    # once per layer, (B * nh, ...) and laid out as the matrix products read them: views of the qkv
    # output would be copied again for every chunk
    keys = key.transpose(-1, -2).reshape(b * nh, c, n).contiguous()
    values = value.reshape(b * nh, n, c).contiguous()
    scaled = (query * c**-0.5).reshape(b * nh, n, c)
    out = torch.empty(b * nh, n, c, dtype=query.dtype, device=query.device)
    step = max(1, min(height, SCORE_ROWS))
    for r0 in range(0, height, step):
        r1 = min(height, r0 + step)
        s0, s1 = r0 * width, r1 * width
        # the chunk's bias (one pass), then q k^T added to it by the matrix product itself
        bias = torch.empty((b, nh, r1 - r0, width, height, width), dtype=query.dtype, device=query.device)
        torch.add(rel_h[:, :, r0:r1, :, :, None], rel_w[:, :, r0:r1, :, None, :], out=bias)
        scores = torch.baddbmm(bias.view(b * nh, s1 - s0, n), scaled[:, s0:s1], keys)
        torch.bmm(torch.softmax(scores, dim=-1), values, out=out[:, s0:s1])
    return out.view(b, nh, n, c)


def folded_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """Attention with the decomposed bias ``rel_h[i, row(j)] + rel_w[i, col(j)]`` folded into Q and K.

    Args:
        query, key, value: (B, nh, H * W, C), keys in row-major order of the H x W grid.
        rel_h, rel_w: (B, nh, H, W, H) and (B, nh, H, W, W), each query's row and column terms.

    Returns:
        (B, nh, H * W, C): ``softmax(q k^T / sqrt(C) + bias) v``.
    """
    b, nh, n, c = query.shape
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    folded_q, folded_k, padded_v = _folded_buffers(query, height, width)
    torch.mul(query, c**-0.5, out=folded_q[..., :c])
    folded_q[..., c : c + height] = rel_h.reshape(b, nh, n, height)
    folded_q[..., c + height :] = rel_w.reshape(b, nh, n, width)
    folded_k[..., :c] = key
    padded_v[..., :c] = value
    return F.scaled_dot_product_attention(folded_q, folded_k, padded_v, scale=1.0)[..., :c]


def _folded_buffers(query: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-thread (B, nh, H * W, C + H + W) buffers for :func:`folded_attention`'s Q, K and V.

    The keys' one-hot codes and V's zero padding are written once; each call writes only the
    first C channels (and the queries' terms). Reused, they cost no fresh memory per layer
    (about 10 ms per ViT-B global layer here).
    """
    b, nh, n, c = query.shape
    key = ("folded", b, nh, n, c, height, width, query.dtype, query.device)
    buffers = _local.__dict__.setdefault("folded", {})
    found = buffers.get(key)
    if found is None:
        buffers.clear()  # one shape at a time: a model has one global-layer shape per input size
        shape = (b, nh, n, c + height + width)
        with torch.inference_mode(False):  # normal tensors: writable in and out of inference mode
            folded_q = torch.empty(shape, dtype=query.dtype, device=query.device)
            folded_k = torch.empty(shape, dtype=query.dtype, device=query.device)
            folded_k[..., c:] = _onehot_keys(height, width, folded_k).t()
            padded_v = torch.zeros(shape, dtype=query.dtype, device=query.device)
        found = buffers[key] = (folded_q, folded_k, padded_v)
    return found


def _fused_forward(self: torch.nn.Module, hidden_states: torch.Tensor, output_attentions: object = None,
                   **_ignored: object) -> tuple[torch.Tensor, None]:
    attn = cast("SamVisionAttention | SamHQVisionAttention", self)  # installed on these classes only
    exporting = torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
    if exporting or output_attentions or torch.is_grad_enabled() and hidden_states.requires_grad:
        return type(self).forward(self, hidden_states, output_attentions)
    b, height, width, _ = hidden_states.shape
    nh = attn.num_attention_heads
    qkv = attn.qkv(hidden_states).reshape(b, height * width, 3, nh, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.unbind(0)  # (B, nh, H * W, C) each
    with torch.autocast(query.device.type, enabled=False):  # the core runs in qkv's dtype
        if attn.use_rel_pos:
            out = relpos_attention(attn, query, key, value, height, width)
        else:
            out = F.scaled_dot_product_attention(query, key, value)
    out = out.transpose(1, 2).reshape(b, height, width, -1)
    return attn.proj(out), None


def _is_vit_attention(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return name.startswith(("SamVision", "SamHQVision")) and name.endswith("Attention")


def install_forwards(model: torch.nn.Module,
                     pick: Callable[[torch.nn.Module], tuple[str, Callable[..., Any]] | None]) -> int:
    """Replace, on each module of ``model`` for which ``pick`` gives ``(attribute, function)``, that
    method by ``function`` bound to the module. Idempotent.

    Returns:
        How many modules have the replacement.
    """
    count = 0
    for module in model.modules():
        entry = pick(module)
        if entry is None:
            continue
        name, fn = entry
        flag = f"_samadapt_{name}"
        if not getattr(module, flag, False):
            setattr(module, name, functools.partial(fn, module))  # picklable, unlike a bound method
            setattr(module, flag, True)
        count += 1
    return count


def _attention_entry(module: torch.nn.Module) -> tuple[str, Callable[..., Any]] | None:
    if _is_vit_attention(module) and hasattr(module, "qkv") and hasattr(module, "get_rel_pos"):
        return "forward", _fused_forward
    return None


def install_fused_attention(model: torch.nn.Module) -> int:
    """Give every SAM / SAM-HQ ViT attention module of ``model`` the fused forward.

    SAM 2's Hiera already calls ``scaled_dot_product_attention`` without a bias, so it is
    left alone. Idempotent.

    Returns:
        How many attention modules use the fused forward.
    """
    return install_forwards(model, _attention_entry)
