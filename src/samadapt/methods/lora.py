"""``lora`` (ArcGIS SamLoRA): LoRA layers in SAM's image encoder, one mask per class.

The image encoder stays frozen; ``peft`` adds low-rank adapters to its attention
projections (``qkv`` in SAM / SAM-HQ's ViT and in SAM 2's Hiera). The prompt encoder gets
no prompt at all, so the mask decoder sees SAM's default "no prompt" embeddings, and the
mask decoder is rebuilt to emit one mask per class (one sigmoid channel for a single
foreground class, else one softmax channel per class including background).

Because the adapters change the encoder, nothing can come from the embedding cache: every
training step runs the encoder on the raw image.

Ownership of weights: the method never changes the loaded base model (other users of the
same ``LoadedModel``, e.g. a ``Segmenter`` and its embedding cache, keep seeing the original
encoder). The encoder and prompt encoder are rebuilt as module copies whose frozen
parameters share storage with the base, so they cost no memory; with ``unfreeze=True`` they
are real copies, trained in full. The decoder is always a trainable copy.

Stable state-dict names (what ``trainable_state_dict`` holds and artifacts store)::

    encoder.<path>.qkv.lora_A.default.weight   (rank, in)   peft's adapter "default"
    encoder.<path>.qkv.lora_B.default.weight   (out, rank)
    decoder.*                                  the rebuilt mask decoder (see ClassMaskDecoder)
    band_adapter.conv.*                        only when in_channels != 3
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from samadapt.errors import InputError
from samadapt.methods._common import BandAdapter, freeze, normalise, raw_input, transformers_model
from samadapt.methods.base import AdaptationMethod, Batch, Sample
from samadapt.methods.options import Option
from samadapt.prompts.types import IGNORE

if TYPE_CHECKING:
    from transformers import Sam2Model

    from samadapt.models.loading import LoadedModel

#: The attention projections that get adapters by default, per family.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {"sam": ("qkv",), "sam-hq": ("qkv",), "sam2": ("qkv",)}
_ADAPTABLE = (nn.Linear, nn.Conv2d)
#: Prompt-encoder embeddings the no-prompt path uses, per family (SAM 2 embeds a "not a point").
_NO_PROMPT_EMBEDDINGS = {"sam": ("no_mask_embed",), "sam-hq": ("no_mask_embed",),
                         "sam2": ("no_mask_embed", "not_a_point_embed")}


class ClassMaskDecoder(nn.Module):
    """SAM's mask decoder rebuilt to output one mask per class, from a pretrained decoder.

    Built from copies of the pretrained parts: the two-way transformer, the upscaling layers
    (and SAM 2's high-resolution projections ``conv_s0/conv_s1``, SAM-HQ's HQ feature
    layers) keep their weights. Class ``k`` gets pretrained mask token ``k mod 4`` and its
    hypernetwork MLP; tokens beyond the four pretrained ones are copies plus a small
    fixed-seed perturbation. The IoU token, the mask tokens no class uses and SAM 2's
    object-score token still take part in attention, but their heads are dropped (class
    masks are not ranked), so a binary decoder starts exactly as SAM's no-prompt
    single-mask output (token 0). SAM-HQ adds one HQ token (a copy of the pretrained
    one) and HQ hypernetwork per class, and a class's logits are its SAM mask plus its HQ
    mask, as SAM-HQ's default output is.

    Args:
        source: the base model's ``mask_decoder`` (not modified).
        family: "sam", "sam-hq" or "sam2".
        out_channels: masks to output.
    """

    # SAM-HQ only: its HQ feature layers, copied by name in ``__init__``.
    compress_vit_conv1: nn.Module
    compress_vit_norm: nn.Module
    compress_vit_conv2: nn.Module
    encoder_conv1: nn.Module
    encoder_norm: nn.Module
    encoder_conv2: nn.Module
    mask_conv1: nn.Module
    mask_norm: nn.Module
    mask_conv2: nn.Module

    def __init__(self, source: nn.Module, family: str, out_channels: int) -> None:
        super().__init__()
        self.family = family
        self.out_channels = out_channels
        gen = torch.Generator().manual_seed(0)
        pretrained = _token(source, "mask_tokens")  # (4, C)
        picks = [k % pretrained.shape[0] for k in range(out_channels)]
        context = [_token(source, "iou_token"), pretrained[out_channels:]]
        if family == "sam2":
            context.insert(0, _token(source, "obj_score_token"))
        #: (n_ctx, C) tokens that only attend: the IoU token, the pretrained mask tokens no class
        #: uses (so the transformer starts on the token set it was trained with) and SAM 2's
        #: object-score token.
        self.context_tokens = nn.Parameter(torch.cat(context).clone())
        self.num_context = int(self.context_tokens.shape[0])
        self.class_tokens = nn.Parameter(_spread(pretrained[picks], pretrained.shape[0], gen))  # (K, C)
        mlps = cast(nn.ModuleList, _part(source, "output_hypernetworks_mlps"))
        self.hypernetworks = nn.ModuleList(copy.deepcopy(mlps[i]) for i in picks)
        self.transformer = copy.deepcopy(_part(source, "transformer"))
        self.upscale_conv1 = copy.deepcopy(_part(source, "upscale_conv1"))
        self.upscale_layer_norm = copy.deepcopy(_part(source, "upscale_layer_norm"))
        self.upscale_conv2 = copy.deepcopy(_part(source, "upscale_conv2"))
        self.activation = nn.GELU()
        if family == "sam2":
            self.conv_s0 = copy.deepcopy(_part(source, "conv_s0"))
            self.conv_s1 = copy.deepcopy(_part(source, "conv_s1"))
        if family == "sam-hq":
            hq = _token(source, "hq_token").expand(out_channels, -1)
            self.hq_tokens = nn.Parameter(_spread(hq, 1, gen))  # (K, C)
            hq_mlp = _part(source, "hq_mask_mlp")
            self.hq_hypernetworks = nn.ModuleList(copy.deepcopy(hq_mlp) for _ in range(out_channels))
            for name in ("compress_vit_conv1", "compress_vit_norm", "compress_vit_conv2", "encoder_conv1",
                         "encoder_norm", "encoder_conv2", "mask_conv1", "mask_norm", "mask_conv2"):
                setattr(self, name, copy.deepcopy(_part(source, name)))
        for module in self.modules():  # hooks installed on the source (e.g. models.hq_fix) are not ours
            module._forward_hooks.clear()
            module._forward_pre_hooks.clear()

    def forward(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor | None,
        dense: torch.Tensor,
        high_res: Sequence[torch.Tensor] = (),
        vit_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class mask logits.

        Args:
            image: (B, C, h, w) image embedding.
            image_pe: (1, C, h, w) image-wide positional embedding.
            sparse: (1 or B, 1, P, C) prompt tokens, or None for none.
            dense: (1 or B, C, h, w) dense prompt embedding.
            high_res: SAM 2 only, the FPN's finest two levels (B, C, 4h, 4w), (B, C, 2h, 2w).
            vit_features: SAM-HQ only, (B, h, w, C_vit) output of the first global-attention block.

        Returns:
            (B, K, 4h, 4w) logits, K = ``out_channels``.
        """
        b, c, h, w = image.shape
        k = self.out_channels
        parts: list[torch.Tensor] = [self.context_tokens, self.class_tokens]
        if self.family == "sam-hq":
            parts.append(self.hq_tokens)
        tokens = torch.cat(parts).to(image.dtype)[None, None].expand(b, 1, -1, -1)  # (B, 1, T, C)
        if sparse is not None:
            tokens = torch.cat([tokens, sparse.to(image.dtype).expand(b, -1, -1, -1)], dim=2)
        # The transformer is equivariant in its tokens' order, so ours need not follow SAM's.
        queries, keys = self.transformer(
            point_embeddings=tokens,
            image_embeddings=image + dense,
            image_positional_embeddings=image_pe.expand(b, -1, -1, -1),
            attention_similarity=None,
        )  # queries (B, 1, T', C); keys (B, 1, h*w, C)
        class_out = queries[:, 0, self.num_context : self.num_context + k]  # (B, K, C)
        feat = keys[:, 0].transpose(1, 2).reshape(b, c, h, w)
        up = self.upscale_conv1(feat)  # (B, C/4, 2h, 2w)
        if self.family == "sam2":
            up = up + self.conv_s1(high_res[1])
        up = self.activation(self.upscale_layer_norm(up))
        up = self.upscale_conv2(up)  # (B, C/8, 4h, 4w)
        if self.family == "sam2":
            up = up + self.conv_s0(high_res[0])
        up = self.activation(up)
        # (B, K, C/8): one hypernetwork per class turns its token into weights over the channels
        hyper = torch.stack([mlp(class_out[:, i]) for i, mlp in enumerate(self.hypernetworks)], dim=1)
        masks = torch.einsum("bkc,bchw->bkhw", hyper, up)
        if self.family == "sam-hq":
            if vit_features is None:
                raise InputError("the SAM-HQ decoder needs the encoder's early ViT features (vit_features)")
            vit = vit_features.permute(0, 3, 1, 2)  # (B, C_vit, h, w)
            hq_feat = self.encoder_conv2(self.activation(self.encoder_norm(self.encoder_conv1(image))))
            vit = self.compress_vit_conv2(self.activation(self.compress_vit_norm(self.compress_vit_conv1(vit))))
            hq_feat = hq_feat + vit  # (B, C/8, 4h, 4w)
            up_hq = self.mask_conv2(self.activation(self.mask_norm(self.mask_conv1(up)))) + hq_feat
            hq_out = queries[:, 0, self.num_context + k : self.num_context + 2 * k]  # (B, K, C)
            hyper_hq = torch.stack([mlp(hq_out[:, i]) for i, mlp in enumerate(self.hq_hypernetworks)], dim=1)
            masks = masks + torch.einsum("bkc,bchw->bkhw", hyper_hq, up_hq)
        return masks


def _part(source: nn.Module, name: str) -> nn.Module:
    """The submodule ``source.<name>`` of a transformers mask decoder.

    ``nn.Module.__getattr__`` is typed to return a tensor or a module; the parts read by name
    here are modules.
    """
    return cast(nn.Module, getattr(source, name))


def _token(source: nn.Module, name: str) -> torch.Tensor:
    """The (n, C) detached weight of the token embedding ``source.<name>`` (an ``nn.Embedding``)."""
    return cast(nn.Embedding, getattr(source, name)).weight.detach()


def _spread(tokens: torch.Tensor, n_pretrained: int, gen: torch.Generator) -> torch.Tensor:
    """Copy (K, C) tokens, perturbing rows from ``n_pretrained`` on (they repeat earlier rows)."""
    out = tokens.detach().clone()
    if out.shape[0] > n_pretrained:
        scale = 0.1 * float(out.std()) if out.numel() > 1 else 0.01
        noise = torch.randn(out.shape[0] - n_pretrained, out.shape[1], generator=gen) * scale
        out[n_pretrained:] += noise.to(out.dtype)
    return out


def _share_copy(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` whose parameters and buffers share the original storage.

    The copy's parameters are new, frozen ``Parameter`` objects, so changing their flags or
    wrapping their layers (peft) leaves the original module as it was; tied parameters stay tied.
    """
    memo: dict[int, torch.Tensor] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in memo:
            memo[id(t)] = nn.Parameter(t.detach(), requires_grad=False) if isinstance(t, nn.Parameter) else t
    return copy.deepcopy(module, memo)


def adaptable_layer_names(encoder: nn.Module) -> list[str]:
    """Last name parts of the encoder's layers LoRA can target (``qkv``, ``proj``, ...), sorted."""
    layers = (name for name, m in encoder.named_modules() if name and isinstance(m, _ADAPTABLE))
    return sorted({name.rsplit(".", 1)[-1] for name in layers})


def _check_targets(encoder: nn.Module, targets: Sequence[str], family: str) -> list[str]:
    names = [n for n, m in encoder.named_modules() if n and isinstance(m, _ADAPTABLE)]
    targets = [str(t) for t in targets]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not targets or missing:
        raise InputError(
            f"target_modules {missing or targets} match no linear or convolution layer of the {family} image "
            f"encoder; choose among: {', '.join(adaptable_layer_names(encoder))}"
        )
    return targets


class LoraMethod(AdaptationMethod):
    """SamLoRA: LoRA in the image encoder, no prompts, a decoder with one mask per class.

    Args:
        base: the loaded SAM-family model (sam, sam-hq or sam2); it is not modified.
        num_classes: classes including background.
        in_channels: bands of the input; != 3 adds a trainable 1x1 band adapter before the encoder.
        rank: LoRA rank.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / rank``); default ``rank``.
        target_modules: encoder layers that get adapters, by name or name suffix as peft matches
            them; default the attention ``qkv`` projections.
        dropout: dropout on the LoRA input.
        unfreeze: train everything the forward pass uses (encoder, the prompt encoder's
            no-prompt embeddings, decoder) as well as the adapters.
        rgb_bands: input bands (0-based) the band adapter starts passing through as RGB;
            only with ``in_channels != 3`` (with 3 bands there is no band adapter).
        augment: with ``train=True``, apply a random flip / 90-degree rotation to each sample.

    Raises:
        InputError: a bad option, or ``target_modules`` that match no layer (the message lists
            the candidate names).
    """

    name = "lora"
    output_scale = 0.25
    OPTIONS: ClassVar[dict[str, Option]] = {
        "rank": Option(int, 4, "rank of the LoRA matrices", low=1),
        "alpha": Option(float, None, "LoRA scaling numerator: updates are scaled by alpha / rank (null: rank)",
                        low=0, low_open=True),
        "target_modules": Option(list, None, "encoder layers that get adapters, by name or name suffix "
                                             "(null: the attention qkv projections)", item=str),
        "dropout": Option(float, 0.0, "dropout on the input of the LoRA matrices", low=0, high=1, high_open=True),
        "unfreeze": Option(bool, False, "train the whole encoder and decoder too, not only the adapters"),
        "rgb_bands": Option(list, [0, 1, 2], "input bands (0-based) the band adapter starts from as RGB; "
                                             "only with other than 3 bands", item=int, length=3, low=0),
        "augment": Option(bool, False, "random flips and 90-degree rotations of training samples"),
    }

    def __init__(
        self,
        base: LoadedModel,
        *,
        num_classes: int = 2,
        in_channels: int = 3,
        rank: int = 4,
        alpha: float | None = None,
        target_modules: Sequence[str] | None = None,
        dropout: float = 0.0,
        unfreeze: bool = False,
        rgb_bands: Sequence[int] = (0, 1, 2),
        augment: bool = False,
        **options: Any,
    ) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        family = base.family
        if family not in DEFAULT_TARGETS:
            raise InputError(f"the lora method supports the sam, sam-hq and sam2 families, not {family!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, (int, np.integer)) or in_channels < 1:
            raise InputError(f"in_channels must be an integer of at least 1, got {in_channels!r}")
        super().__init__(base, num_classes=num_classes, in_channels=int(in_channels), rank=rank, alpha=alpha,
                         target_modules=target_modules, dropout=dropout, unfreeze=unfreeze, rgb_bands=rgb_bands,
                         augment=augment, **options)
        o = self.options
        rank = o["rank"]
        alpha = float(rank) if o["alpha"] is None else o["alpha"]
        rgb = tuple(o["rgb_bands"])
        if self.in_channels == 3 and list(rgb) != [0, 1, 2]:
            raise InputError(
                f"lora option rgb_bands={list(rgb)} picks the bands a band adapter starts from, but with 3 input "
                "bands there is no band adapter; choose the bands with --bands instead"
            )
        self.unfreeze, self.augment = o["unfreeze"], o["augment"]
        model = transformers_model(base)
        copy_part = copy.deepcopy if self.unfreeze else _share_copy
        encoder = copy_part(model.vision_encoder)
        targets = _check_targets(encoder, o["target_modules"] or DEFAULT_TARGETS[family], family)
        # what the adapter's config records: the values in force, not the "work it out" nulls
        o["alpha"], o["target_modules"] = alpha, targets
        self.family = family
        # peft types lora_alpha as int, but only divides it by the rank: a float alpha works
        lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets,  # type: ignore[arg-type]
                          lora_dropout=o["dropout"], bias="none")
        # In place on our copy: the LoRA layers wrap the copied projections as ``base_layer``.
        self.encoder = inject_adapter_in_model(lora, encoder)
        self.prompt_encoder = copy_part(model.prompt_encoder)
        if family == "sam2":
            # added to the coarsest FPN level
            nm = cast("Sam2Model", model).no_memory_embedding.detach().reshape(1, -1, 1, 1)
            self.no_memory_embedding = nn.Parameter(nm.clone() if self.unfreeze else nm, requires_grad=False)
        self.decoder = ClassMaskDecoder(model.mask_decoder, family, self.out_channels)
        self.band_adapter = BandAdapter(self.in_channels, rgb).to(base.device) if self.in_channels != 3 else None
        with torch.no_grad():
            # SAM's positional encoding is a fixed random Fourier basis (a buffer in the original code).
            self.register_buffer("image_pe", model.get_image_wide_positional_embeddings().detach().clone(),
                                 persistent=False)  # (1, C, h, w)
        for pname, p in self.encoder.named_parameters():
            p.requires_grad_(self.unfreeze or "lora_" in pname)
        # Unfrozen, the prompt encoder trains only what the no-prompt path uses; SAM's positional
        # basis stays fixed, and no parameter is left trainable without ever getting a gradient.
        freeze(self.prompt_encoder)
        for pname in _NO_PROMPT_EMBEDDINGS[family] if self.unfreeze else ():
            getattr(self.prompt_encoder, pname).weight.requires_grad_(True)
        if family == "sam2":
            self.no_memory_embedding.requires_grad_(self.unfreeze)

    # --- data -----------------------------------------------------------------------------
    def make_inputs(self, sample: Sample, *, train: bool, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Raw resized image, its valid size and (when labelled) the target.

        Returns:
            "image": (C_in, S, S) float 0-255, zero-padded bottom-right; "resized_hw": (2,) long
            rows and columns of the image inside the padding; "target": (S/4, S/4) long class
            ids, 255 = ignore (padding and pixels outside ``sample.valid``).

        Raises:
            InputError: pixels that are not (H, W, in_channels) uint8, or a target of another
                size or with class ids >= num_classes.
        """
        pixels, valid, target = sample.pixels, sample.valid, sample.target
        if pixels.ndim != 3 or pixels.shape[2] != self.in_channels or pixels.dtype != np.uint8:
            raise InputError(f"{sample.stem}: expected (H, W, {self.in_channels}) uint8 pixels, got shape "
                             f"{pixels.shape} and dtype {pixels.dtype}")
        if target is not None:
            if target.shape != pixels.shape[:2]:
                raise InputError(f"{sample.stem}: target shape {target.shape} differs from the image's "
                                 f"{pixels.shape[:2]}")
            ids = np.unique(target)
            bad = ids[(ids != IGNORE) & (ids >= self.num_classes)]
            if bad.size:
                raise InputError(f"{sample.stem}: target has class ids {bad.tolist()}, but num_classes is "
                                 f"{self.num_classes} (ids 0..{self.num_classes - 1}, 255 = ignore)")
            if valid is not None:
                if valid.shape != target.shape:
                    raise InputError(f"{sample.stem}: valid mask shape {valid.shape} differs from the image's "
                                     f"{target.shape}")
                target = np.where(valid, target, IGNORE).astype(np.uint8)
        if train and self.augment:
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            pixels = _dihedral(pixels, turns, flip)
            if target is not None:
                target = _dihedral(target, turns, flip)
        raw, geometry = raw_input(np.ascontiguousarray(pixels), self.preprocessing)
        out = {"image": raw, "resized_hw": torch.tensor(geometry.resized_hw, dtype=torch.long)}
        if target is not None:
            out["target"] = self.target_tensor(target, geometry)
        return out

    # --- model ----------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits (B, out_channels, S/4, S/4) from ``batch["image"]`` (B, C_in, S, S) 0-255."""
        raw = batch["image"]
        if self.band_adapter is not None:
            raw = self.band_adapter(raw)  # (B, 3, S, S)
        x = normalise(raw, batch.get("resized_hw"), self.preprocessing)
        high_res: list[torch.Tensor] = []
        vit = None
        if self.family == "sam2":
            # FPN levels, high to low resolution: (B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w)
            fpn = self.encoder(x).fpn_hidden_states
            image = fpn[-1] + self.no_memory_embedding
            high_res = list(fpn[:2])
            # SAM 2's "no prompt" is one padding point labelled -1 (as transformers' Sam2Model does)
            points = torch.zeros(1, 1, 1, 2, dtype=x.dtype, device=x.device)
            labels = -torch.ones(1, 1, 1, dtype=torch.int32, device=x.device)
            sparse, dense = self.prompt_encoder(points, labels, None, None)  # (1, 1, 2, C), (1, C, h, w)
        else:
            out = self.encoder(x)
            image = out.last_hidden_state  # (B, C, h, w)
            if self.family == "sam-hq":
                vit = out.intermediate_embeddings[0]  # (B, h, w, C_vit)
            sparse, dense = self.prompt_encoder(None, None, None, None)  # None, (1, C, h, w)
        return self.decoder(image, self.image_pe, sparse, dense, high_res=high_res, vit_features=vit)


def _dihedral(a: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, turns, axes=(0, 1))
    return a[:, ::-1] if flip else a
