"""Inference forwards for the encoder blocks of SAM / SAM-HQ (ViT) and SAM 2 (Hiera).

transformers' blocks are written for training and for every device. Under bf16 autocast on a
CPU they spend about a third of their time outside the matrix products: each linear layer
casts its fp32 input to bf16 and the activation, bias and residual each make a pass over
fresh memory. Hiera's attention also computes an attention-weight tensor it never uses.
The forwards here compute the same block:

* the residual stream stays fp32 (as under autocast), while everything between two residual
  additions runs in bf16: layer norm reads the fp32 stream and writes bf16, the window
  partition moves bf16, and the block's output is added into the stream in place;
* linear layers use oneDNN with the weight pre-packed once into its bf16 blocked layout
  (re-packed when the weight changes) and with GELU fused into the first MLP layer;
* ViT attention goes through :func:`samadapt.models.accel.fast_attention.relpos_attention`, Hiera's
  through ``scaled_dot_product_attention`` alone;
* Hiera's interpolated position embedding and SAM 2's sine position encodings are kept per
  input size instead of being rebuilt for every image.

In fp32 (no autocast) the same forwards compute what transformers computes, with plain
``F.linear``. A block falls back to its own forward while gradients are recorded (training),
while torch.compile or an exporter traces it, and for layers whose linear modules were
replaced (e.g. by LoRA wrappers), so training and adapters see transformers' code.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import nn

from samadapt.models.accel.fast_attention import install_forwards, relpos_attention

if TYPE_CHECKING:
    from transformers.models.sam.modeling_sam import SamVisionLayer
    from transformers.models.sam2.modeling_sam2 import Sam2HieraDetModel, Sam2MultiScaleBlock, Sam2VisionNeck
    from transformers.models.sam_hq.modeling_sam_hq import SamHQVisionLayer

# Per-module caches, held beside the modules rather than on them: a packed oneDNN weight
# cannot be pickled (Dask workers get the model by pickle) and must not follow a deepcopy.
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[Any, Any, Any]] = weakref.WeakKeyDictionary()
_POS: weakref.WeakKeyDictionary[nn.Module, dict[Any, torch.Tensor]] = weakref.WeakKeyDictionary()


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    """bf16 under CPU bf16 autocast, fp32 for fp32 inputs otherwise; None when the fast path must not run."""
    if torch.is_grad_enabled() or _tracing():
        return None
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
    if torch.is_autocast_enabled(x.device.type) or x.dtype != torch.float32:
        return None  # other autocasts and half-precision models keep transformers' code
    return x.dtype


@functools.lru_cache(maxsize=1)
def _onednn_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def tensor_identity(t: torch.Tensor) -> tuple[int, int]:
    """Storage address and version of ``t``; tensors made under inference mode have no version (-1)."""
    try:
        return t.data_ptr(), t._version
    except RuntimeError:  # an inference tensor
        return t.data_ptr(), -1


def _packed(module: nn.Linear | nn.Conv2d, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """The (out, in) weight and bias of a linear or 1x1-conv ``module`` in ``dtype``, oneDNN-packed when it can.

    The cache is keyed by the tensors' identity and version counters, so an optimiser step or
    a ``load_state_dict`` re-packs on the next call.
    """
    w, b = module.weight, module.bias
    key = (dtype, *tensor_identity(w), *(tensor_identity(b) if b is not None else ()))
    cached = _PACKED.get(module)
    if cached is not None and cached[0] == key and cached[2]() is w:  # same tensor, not a new one at its address
        return cached[1]
    with torch.inference_mode(False), torch.no_grad():
        wd = w.detach().reshape(w.shape[0], -1).to(dtype)
        bd = None if b is None else b.detach().to(dtype)
        onednn = dtype == torch.bfloat16 and w.device.type == "cpu" and _onednn_bf16()
        if onednn:
            wd = torch.ops.mkldnn._reorder_linear_weight(wd, None)
    value = (wd, bd, onednn)
    _PACKED[module] = (key, value, weakref.ref(w))
    return value


def linear(module: nn.Linear | nn.Conv2d, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``module(x)`` (then exact GELU when asked) in ``x``'s dtype, over the last dimension of ``x``.

    ``module`` is an ``nn.Linear``, or a 1x1 ``nn.Conv2d`` applied to channels-last ``x``.
    """
    w, b, onednn = _packed(module, x.dtype)
    if onednn:
        flat = x.reshape(-1, x.shape[-1])
        if not flat.is_contiguous():
            flat = flat.contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, w, b, "gelu" if gelu else "none", [], "none" if gelu else "")
        return out.view(*x.shape[:-1], out.shape[-1])
    out = F.linear(x, w, b)
    return F.gelu(out) if gelu else out


def _plain_linears(*modules: nn.Module) -> bool:
    return all(type(m) is nn.Linear for m in modules)


def _is_exact_gelu(act: object) -> bool:
    return isinstance(act, nn.GELU) and act.approximate == "none" or type(act).__name__ == "GELUActivation"


def _stream(hidden_states: torch.Tensor) -> torch.Tensor:
    """The residual stream in fp32 and contiguous. The patch embedding hands over a permuted view;
    left so, every layer norm of the stage would copy it first."""
    return hidden_states.float().contiguous()


def _pointwise_conv(conv: nn.Module) -> TypeGuard[nn.Conv2d]:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid") and conv.groups == 1 and conv.dilation == (1, 1))


def _norm(module: nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Layer norm of the fp32 stream ``x``, returned in ``dtype`` (statistics in fp32)."""
    out = F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
    return out if out.dtype == dtype else out.to(dtype)


def _vit_layer_forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    layer = cast("SamVisionLayer | SamHQVisionLayer", self)  # installed on these classes only (_FORWARDS)
    dtype = _compute_dtype(hidden_states)
    attn, mlp = layer.attn, layer.mlp
    if dtype is None or args or kwargs or not _plain_linears(attn.qkv, attn.proj, mlp.lin1, mlp.lin2) \
            or not _is_exact_gelu(mlp.act):
        return type(self).forward(self, hidden_states, *args, **kwargs)
    with torch.autocast("cpu", enabled=False):
        x = _stream(hidden_states)
        _b, height, width, channels = x.shape
        h = _norm(layer.layer_norm1, x, dtype)
        if layer.window_size > 0:
            h, padded = layer.window_partition(h, layer.window_size)
        nb, hh, ww, _ = h.shape
        nh = attn.num_attention_heads
        qkv = linear(attn.qkv, h).reshape(nb, hh * ww, 3, nh, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        if attn.use_rel_pos:
            h = relpos_attention(attn, query, key, value, hh, ww)
        else:
            h = F.scaled_dot_product_attention(query, key, value)
        h = linear(attn.proj, h.transpose(1, 2).reshape(nb, hh, ww, channels))
        if layer.window_size > 0:
            h = layer.window_unpartition(h, layer.window_size, padded, (height, width))
        x = x + h
        h = linear(mlp.lin2, linear(mlp.lin1, _norm(layer.layer_norm2, x, dtype), gelu=True))
        return x.add_(h)


def _pool(x: torch.Tensor, stride: tuple[int, int] | None) -> torch.Tensor:
    """Hiera's query pooling on (B, H, W, C); max_pool2d reads the permuted view as channels-last."""
    if stride is None:
        return x
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)


def _patch_embed_forward(self: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The patch embedding computed channels-last, so its (B, H, W, C) result is contiguous."""
    if _compute_dtype(pixel_values) is not None and pixel_values.dim() == 4:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    return type(self).forward(self, pixel_values)


def _hiera_block_forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    from transformers.models.sam2.modeling_sam2 import (
        window_partition,
        window_unpartition,
    )

    block = cast("Sam2MultiScaleBlock", self)  # installed on this class only (_FORWARDS)
    dtype = _compute_dtype(hidden_states)
    attn, mlp = block.attn, block.mlp
    # the block's query stride, as its attention holds it: the same object, typed as the pair it is
    query_stride = attn.query_stride
    projected = block.dim != block.dim_out
    linears = [attn.qkv, attn.proj, mlp.proj_in, mlp.proj_out, *([block.proj] if projected else [])]
    if dtype is None or args or kwargs or len(mlp.layers) or mlp.sigmoid_output or not _plain_linears(*linears) \
            or not _is_exact_gelu(mlp.activation):
        return type(self).forward(self, hidden_states, *args, **kwargs)
    with torch.autocast("cpu", enabled=False):
        x = _stream(hidden_states)
        h = _norm(block.layer_norm1, x, dtype)
        residual = _pool(linear(block.proj, h), query_stride).float() if projected else x
        window = block.window_size
        height, width = h.shape[1:3]
        if window > 0:
            h, padded = window_partition(h, window)
        nb, hh, ww, _ = h.shape
        nh = attn.num_attention_heads
        qkv = linear(attn.qkv, h).reshape(nb, hh * ww, 3, nh, -1)
        query, key, value = qkv.unbind(2)
        if query_stride:
            query = _pool(query.reshape(nb, hh, ww, -1), query_stride)
            hh, ww = query.shape[1:3]
            query = query.reshape(nb, hh * ww, nh, -1)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        h = linear(attn.proj, out.transpose(1, 2).reshape(nb, hh, ww, -1))
        if window > 0:
            if query_stride:
                window //= query_stride[0]
                height, width = residual.shape[1:3]
                padded = (height + (-height) % window, width + (-width) % window)
            h = window_unpartition(h, window, padded, (height, width))
        x = residual + h
        h = linear(mlp.proj_out, linear(mlp.proj_in, _norm(block.layer_norm2, x, dtype), gelu=True))
        return x.add_(h)


def _sam2_neck_forward(self: nn.Module, hidden_states: tuple[torch.Tensor, ...]
                       ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """SAM 2's feature pyramid with its 1x1 convolutions as linear layers on channels-last features.

    transformers permutes each (B, H, W, C) stage output to (B, C, H, W) and convolves; oneDNN then
    copies the channels-last result into NCHW (about 50 ms for the 256 x 256 level alone). Here
    the features stay channels-last and the returned maps are (B, C, H, W) views of them.
    """
    neck = cast("Sam2VisionNeck", self)  # installed on this class only (_FORWARDS)
    dtype = _compute_dtype(hidden_states[0])
    convs = [c for c in neck.convs if _pointwise_conv(c)]
    top_down = neck.fpn_top_down_levels  # a list once the config is built
    if dtype is None or len(convs) < len(neck.convs) or top_down is None:
        return type(self).forward(self, hidden_states)
    fpn_hidden_states: tuple[torch.Tensor, ...] = ()
    fpn_position_encoding: tuple[torch.Tensor, ...] = ()
    n = len(convs) - 1
    with torch.autocast("cpu", enabled=False):
        for i in range(n, -1, -1):
            lateral = linear(convs[n - i], hidden_states[i].to(dtype))  # (B, H, W, C) as transformers pairs them
            if i not in top_down or i == n:
                prev = lateral
            else:  # nearest-neighbour x2, as F.interpolate(scale_factor=2.0, mode="nearest")
                prev = lateral + prev.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
            features = prev.permute(0, 3, 1, 2)
            fpn_hidden_states += (features,)
            fpn_position_encoding += (neck.position_encoding(features.shape, features.device, features.dtype),)
    return fpn_hidden_states, fpn_position_encoding


def _hiera_pos_embed(self: nn.Module, hw: tuple[int, int]) -> torch.Tensor:
    """Hiera's interpolated position embedding, kept per size while its parameters are unchanged."""
    hiera = cast("Sam2HieraDetModel", self)  # installed on this class only (_FORWARDS)
    if torch.is_grad_enabled() or _tracing():
        return type(hiera)._get_pos_embed(hiera, hw)
    key = (tuple(hw), *tensor_identity(hiera.pos_embed), *tensor_identity(hiera.pos_embed_window))
    cache = _POS.setdefault(self, {})
    if key not in cache:
        cache.clear()
        with torch.autocast(hiera.pos_embed.device.type, enabled=False):
            cache[key] = type(hiera)._get_pos_embed(hiera, hw)
    return cache[key]


def _sine_encoding(self: nn.Module, shape: torch.Size, device: torch.device | str, dtype: torch.dtype,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """SAM 2's sine position encoding, kept per (shape, dtype) for the few shapes one model uses."""
    if mask is not None or _tracing():
        return type(self).forward(self, shape, device, dtype, mask)
    key = (tuple(shape), str(device), dtype)
    cache = _POS.setdefault(self, {})
    if key not in cache:
        if len(cache) >= 8:
            cache.clear()
        # contiguous: the (B, C, H, W) permuted view transformers returns is flattened by the
        # caller, which would copy it (16 M elements at the highest level) on every image
        cache[key] = type(self).forward(self, shape, device, dtype, mask).contiguous()
    return cache[key]


#: transformers class name -> (method to replace, its replacement).
_FORWARDS: dict[str, tuple[str, Callable[..., Any]]] = {
    "SamVisionLayer": ("forward", _vit_layer_forward),
    "SamHQVisionLayer": ("forward", _vit_layer_forward),
    "Sam2MultiScaleBlock": ("forward", _hiera_block_forward),
    "Sam2HieraDetModel": ("_get_pos_embed", _hiera_pos_embed),
    "Sam2SinePositionEmbedding": ("forward", _sine_encoding),
    "Sam2VisionNeck": ("forward", _sam2_neck_forward),
    "SamPatchEmbeddings": ("forward", _patch_embed_forward),
    "SamHQPatchEmbeddings": ("forward", _patch_embed_forward),
    "Sam2PatchEmbeddings": ("forward", _patch_embed_forward),
}


def install_fast_encoder(model: nn.Module) -> int:
    """Give the encoder blocks of ``model`` the inference forwards of this module. Idempotent.

    Returns:
        How many modules were given a forward (blocks, position embeddings).
    """
    return install_forwards(model, lambda module: _FORWARDS.get(type(module).__name__))
