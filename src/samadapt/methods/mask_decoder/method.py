"""The ``mask-decoder`` method: its options, inputs, loss and prediction (see :mod:`samadapt.methods.mask_decoder`)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar, cast, get_args

import numpy as np
import torch

from samadapt.errors import InputError
from samadapt.imagery.preprocess import Geometry, coords_to_model
from samadapt.methods._common import (
    candidate_ious,
    candidate_losses,
    freeze,
    segmentation_loss,
    target_in_frame,
    transformers_model,
)
from samadapt.methods.base import Batch, Sample
from samadapt.methods.mask_decoder.decoding import AdaptedDecoder, prompt_groups
from samadapt.methods.mask_decoder.outputs import (
    GRID_LOSS_FLOOR,
    GRID_POINTS,
    GRID_VALID,
    OFF_LOGIT,
    MultimaskMode,
    pack_output,
    split_output,
)
from samadapt.methods.options import Option, check_flag
from samadapt.models.loading import LoadedModel
from samadapt.predict.automatic import point_grid
from samadapt.predict.packing import pack_prompts
from samadapt.prompts.sampling import SamplingOptions, prompts_from_mask, regions
from samadapt.prompts.types import IGNORE, ObjectPrompt, PromptMode

if TYPE_CHECKING:
    from transformers.models.sam2.modeling_sam2 import Sam2MaskDecoder

#: The prompt modes mask-decoder trains with (of :data:`~samadapt.prompts.types.PromptMode`).
PROMPT_MODES: tuple[PromptMode, ...] = ("box", "point", "points")
#: Mask-decoder parts that never train: SAM 2's conv_s0 / conv_s1 belong to the encoder
#: path (their output is in the cached embedding) and its object-score head gets no loss.
_FROZEN_PARTS = {"sam2": ("conv_s0", "conv_s1", "pred_obj_score_head")}


class MaskDecoderMethod(AdaptedDecoder):
    """SAM's mask decoder fine-tuned on prompts generated from ground-truth masks.

    Evaluation prompts with an automatic point grid unless :meth:`use_oracle_prompts` says
    otherwise (see the module docstring).

    Args:
        base: the loaded SAM, SAM 2 or SAM-HQ model; its decoder is copied, not changed.
        num_classes: must be 2 (background + one object class).
        in_channels: must be 3 (the frozen encoder runs on cached 3-band embeddings).
        prompt: ``"box"`` (tight box of each region), ``"point"`` (its interior point, plus
            ``n_neg`` negatives) or ``"points"`` (``n_pos`` positives plus ``n_neg`` negatives).
        n_pos: positive points per object with ``"points"`` (1 with ``"point"``).
        n_neg: negative points per object (0 with ``"box"``).
        erode: with ``"points"`` and ``n_pos >= 2``, the positives after the interior point are
            drawn from the object eroded by a disc of this radius (pixels of the original
            image), so they stay inside it; also applied to rough-mask prompts in :meth:`predict`.
        box_noise: largest random shift of each box coordinate during training, in pixels of
            the original image (evaluation and prediction use the tight box); the river
            fine-tuning tutorial's ``perturbation``, which is accepted as an alias.
        max_objects: prompts per image; the largest regions are kept, fewer are padded.
        multimask: ``"best"`` trains the candidate of lowest loss among SAM's 3 and predicts
            with the one of highest predicted IoU; ``"mean"`` trains and predicts the mean of
            the 3 candidates' logits; ``"single"`` asks the decoder for one mask.
        iou_weight: weight of the IoU-head loss (MSE between predicted and actual IoU).
        eval_grid: points per side of the automatic grid that prompts evaluation (without
            oracle prompts) and :meth:`predict` without prompts.
        eval_iou_threshold: smallest predicted IoU of a grid point's mask that is kept; 0.88
            is SAM's automatic-mode ``pred_iou_thresh``.

    Raises:
        InputError: on an option outside the values above, or one that would change nothing
            with the chosen prompt (``erode``, ``box_noise``, ``n_pos``, ``n_neg``).
    """

    name = "mask-decoder"
    takes_prompts = True
    binary_only = True
    output_scale = 0.25
    OPTIONS: ClassVar[dict[str, Option]] = {
        "prompt": Option(str, "box", "prompt made from each ground-truth region: its tight box, its interior "
                                     "point, or n_pos positive points", choices=PROMPT_MODES),
        "n_pos": Option(int, 1, "positive points per object (prompt points only)", low=1),
        "n_neg": Option(int, 0, "negative points per object, near it and outside it (prompt point or points)",
                        low=0),
        "erode": Option(int, 0, "erosion radius in pixels keeping sampled positive points inside the object "
                                "(prompt points, n_pos >= 2)", low=0),
        "box_noise": Option(float, 0.0, "largest random shift of each training box coordinate, in pixels "
                                        "(prompt box)", low=0, aliases=("perturbation",)),
        "max_objects": Option(int, 8, "prompts per image; the largest regions are kept", low=1),
        "multimask": Option(str, "best", "train the best of SAM's 3 candidate masks, their mean, or ask for one "
                                         "mask", choices=get_args(MultimaskMode)),
        "iou_weight": Option(float, 1.0, "weight of the IoU-head loss", low=0),
        "eval_grid": Option(int, 16, "points per side of the automatic grid of single positive points that "
                                     "prompts evaluation (without oracle prompts) and predict without prompts", low=1),
        "eval_iou_threshold": Option(float, 0.88, "smallest predicted IoU of a grid point's mask that is kept "
                                                  "(SAM's automatic-mode pred_iou_thresh)", low=0, high=1),
    }

    def __init__(
        self,
        base: LoadedModel,
        *,
        num_classes: int = 2,
        in_channels: int = 3,
        prompt: PromptMode = "box",
        n_pos: int = 1,
        n_neg: int = 0,
        erode: int = 0,
        box_noise: float = 0.0,
        max_objects: int = 8,
        multimask: MultimaskMode = "best",
        iou_weight: float = 1.0,
        eval_grid: int = 16,
        eval_iou_threshold: float = 0.88,
        **options: Any,
    ) -> None:
        _check_frame(num_classes, in_channels)
        super().__init__(base, num_classes=num_classes, in_channels=in_channels, prompt=prompt, n_pos=n_pos,
                         n_neg=n_neg, erode=erode, box_noise=box_noise, max_objects=max_objects, multimask=multimask,
                         iou_weight=iou_weight, eval_grid=eval_grid, eval_iou_threshold=eval_iou_threshold,
                         **options)
        o = self.options
        _check_prompt_options(o)
        if base.family not in ("sam", "sam2", "sam-hq"):
            raise InputError(f"mask-decoder supports the sam, sam2 and sam-hq families, got {base.family!r}")
        self.prompt: PromptMode = o["prompt"]
        self.n_pos = o["n_pos"]
        self.n_neg = o["n_neg"]
        self.erode = o["erode"]
        self.box_noise = o["box_noise"]
        self.max_objects = o["max_objects"]
        self.multimask: MultimaskMode = o["multimask"]
        self.iou_weight = o["iou_weight"]
        self.eval_grid = o["eval_grid"]
        self.eval_iou_threshold = o["eval_iou_threshold"]
        self._oracle = False
        self.mask_decoder = copy.deepcopy(transformers_model(base).mask_decoder)
        for p in self.mask_decoder.parameters():
            p.requires_grad_(True)
        for part in _FROZEN_PARTS.get(base.family, ()):
            freeze(getattr(self.mask_decoder, part))
        if base.family == "sam2":
            # In eval mode SAM 2 swaps the single mask for a "stable" multimask candidate;
            # training and prediction must see the same output.
            cast("Sam2MaskDecoder", self.mask_decoder).dynamic_multimask_via_stability = False
        self.mask_decoder.train(self.training)

    def sampling_options(self, *, box_noise: float = 0.0, seed: int = 0) -> SamplingOptions:
        """How this method draws a prompt from each region (of the ground truth, or of a rough mask)."""
        return SamplingOptions(mode=self.prompt, n_pos=self.n_pos, n_neg=self.n_neg, erode=self.erode,
                               box_noise=box_noise, seed=seed)

    @property
    def points_per_object(self) -> int:
        """P, the fixed number of point slots per object (0 for box prompts)."""
        return 0 if self.prompt == "box" else self.n_pos + self.n_neg

    # --- ground truth at test time ---------------------------------------------------------------
    def use_oracle_prompts(self, on: bool) -> None:
        """Prompt evaluation from the ground truth being scored (True) or with the automatic grid (False).

        False is the default: ``make_inputs(..., train=False)`` then reads the target only to
        score it. True restores the prompts of training (without ``box_noise``), an oracle
        that flatters the scores; :attr:`oracle` records it. Training is not affected.

        Args:
            on: True for oracle prompts.

        Raises:
            InputError: if ``on`` is not a bool.
        """
        self._oracle = check_flag(on, "use_oracle_prompts")

    @property
    def oracle(self) -> bool:
        """True when evaluation prompts come from the ground truth (see :meth:`use_oracle_prompts`)."""
        return self._oracle

    # --- inputs -------------------------------------------------------------------------------
    def ground_truth_prompts(
        self, target: np.ndarray, *, rng: np.random.Generator, train: bool
    ) -> tuple[list[ObjectPrompt], list[np.ndarray]]:
        """Prompts and regions of a binary target, in pixels of the original image.

        Args:
            target: (H, W) uint8, 0 background, 1 object, 255 ignore.
            rng: draws the seed of the prompts, so equal generator states give equal prompts.
            train: add ``box_noise`` to boxes (only while training; ``erode`` applies always).

        Returns:
            Up to ``max_objects`` prompts and the (H, W) bool region each one belongs to,
            largest region first.
        """
        seed = int(rng.integers(0, 2**31 - 1))
        options = self.sampling_options(box_noise=self.box_noise if train else 0.0, seed=seed)
        prompts = prompts_from_mask(target, options)
        found = regions(target)
        return prompts[: self.max_objects], found[: self.max_objects]

    def make_inputs(self, sample: Sample, *, train: bool, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Tensors of one sample (keys in the module docstring, without the batch axis).

        In training, and at evaluation with oracle prompts, the prompts come from the target;
        at evaluation otherwise they are the automatic grid (:meth:`grid_tensors`), which
        needs no target, and the target, when there is one, is only scored.

        Raises:
            InputError: if prompts come from the ground truth and the sample has none (use
                :meth:`predict` for unlabelled images), or the target holds values other than
                0, 1 and 255.
        """
        from_truth = train or self._oracle
        if sample.target is None and from_truth:
            raise InputError(
                f"mask-decoder makes its {'training' if train else 'oracle'} prompts from the ground truth, and "
                f"{sample.stem} has none; call predict(pixels, prompts=...), predict(pixels, rough=...) or "
                "predict(pixels) for unlabelled images"
            )
        if sample.target is not None:
            extra = np.setdiff1d(np.unique(sample.target), (0, 1, IGNORE))
            if extra.size:
                raise InputError(
                    f"mask-decoder trains on binary targets (0, 1 and 255 = ignore), but {sample.stem} holds class "
                    f"ids {extra[:5].tolist()}; train one class against the rest (samadapt train --class K, or one "
                    "adapter per class without --class)"
                )
        out = self._embedding_tensors(self.embedding(sample), squeeze=True)
        h, w = sample.pixels.shape[:2]
        geometry = self.geometry_of(h, w)
        side = self.output_side
        if not from_truth:
            out.update(self.grid_tensors(geometry, sample.valid))
            if sample.target is not None:
                out["target"] = target_in_frame(sample.target, geometry, self.preprocessing, side)
            return out
        prompts, found = self.ground_truth_prompts(sample.target, rng=rng, train=train)  # type: ignore[arg-type]
        out.update(self._prompt_tensors(prompts, geometry, self.max_objects))
        out["object_valid"] = torch.arange(self.max_objects) < len(prompts)
        background = np.where(sample.target == IGNORE, IGNORE, 0).astype(np.uint8)
        objects = torch.full((self.max_objects, side, side), IGNORE, dtype=torch.long)
        for i, region in enumerate(found):
            objects[i] = target_in_frame(np.where(region, 1, background), geometry, self.preprocessing, side)
        out["object_target"] = objects
        # Foreground the prompts did not reach (regions beyond max_objects) is not asked for.
        union = np.where(sample.target == 1, IGNORE, background).astype(np.uint8)
        for region in found:
            union[region] = 1
        out["target"] = target_in_frame(union, geometry, self.preprocessing, side)
        return out

    def grid_tensors(self, geometry: Geometry, valid: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The automatic prompt grid of one image: ``eval_grid`` x ``eval_grid`` single positive points.

        Args:
            geometry: the image's preprocessing geometry.
            valid: (H, W) bool, False where the image has no data (points there are switched
                off); None switches every point on.

        Returns:
            ``grid_points`` (G, 2) float (x, y) in the model-input frame, G = ``eval_grid`` ** 2:
            the cell centres of a regular grid over the original image (as
            :func:`samadapt.predict.automatic.point_grid` places them), row by row; ``grid_valid`` (G,) bool.
        """
        h, w = geometry.original_hw
        xy = point_grid(h, w, self.eval_grid)
        on = np.ones(len(xy), dtype=bool)
        if valid is not None:
            rows = np.clip(xy[:, 1].astype(np.int64), 0, h - 1)
            cols = np.clip(xy[:, 0].astype(np.int64), 0, w - 1)
            on = np.asarray(valid, dtype=bool)[rows, cols]
        return {GRID_POINTS: torch.from_numpy(coords_to_model(xy, geometry)).float(), GRID_VALID: torch.from_numpy(on)}

    def _embedding_tensors(self, emb: dict[str, torch.Tensor], *, squeeze: bool) -> dict[str, torch.Tensor]:
        return {("embedding" if k == "image" else k): (v[0] if squeeze else v) for k, v in emb.items()}

    def _prompt_tensors(self, prompts: list[ObjectPrompt], geometry: Geometry, n: int) -> dict[str, torch.Tensor]:
        """Boxes (n, 4) or points (n, P, 2) + labels (n, P) in the model-input frame, padded to n."""
        if self.prompt == "box":
            packed = pack_prompts(prompts, geometry, objects=n, points=0, boxes=True, missing_box=0.0)
            return {"boxes": torch.from_numpy(packed.boxes).float()}
        packed = pack_prompts(prompts, geometry, objects=n, points=self.points_per_object, boxes=False)
        return {"points": torch.from_numpy(packed.points).float(), "labels": torch.from_numpy(packed.labels)}

    # --- decoding -----------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        """Candidate logits and predicted IoUs of every object, packed as the module docstring says.

        A grid batch (``grid_points``) is decoded without gradients, in chunks
        (:meth:`_grid_logits`), and gives N = M = 1: the merged mask of the kept grid masks.

        Args:
            batch: stacked :meth:`make_inputs` dicts.

        Returns:
            (B, N, M + 1, h, w) float: M candidate logits per object, then the IoU plane.
        """
        if GRID_POINTS in batch:
            merged, best = self._grid_logits(batch, batch[GRID_POINTS], batch[GRID_VALID])
            return pack_output(merged[:, None, None], best[:, None, None])
        masks, iou = self._decode(batch, batch.get("points"), batch.get("labels"), batch.get("boxes"))
        valid = batch["object_valid"].to(masks.device)[:, :, None, None, None]
        masks = torch.where(valid, masks, torch.full_like(masks, OFF_LOGIT))
        return pack_output(masks, iou)

    # --- loss and probabilities ---------------------------------------------------------------
    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Dice + BCE per prompted object (255 ignored) plus the IoU-head loss, mean over objects.

        With ``multimask="best"`` each object's mask loss is that of its best candidate (as in
        SAM's own training); with ``"mean"`` it is the loss of the candidates' mean logits. The
        IoU head learns the actual IoU of each candidate thresholded at 0, by squared error.

        A grid batch (evaluation without oracle prompts) has no objects: its loss is dice +
        BCE of the merged mask against the whole target (255 ignored), with logits floored at
        :data:`GRID_LOSS_FLOOR` so that a pixel no kept mask covers costs what a confident miss
        costs, not 10 000.

        Args:
            logits: (B, N, M + 1, h, w) as :meth:`forward` returns it.
            batch: with ``object_valid`` (B, N) and ``object_target`` (B, N, h, w), or a grid
                batch with ``target`` (B, h, w).

        Returns:
            A scalar; 0 (with a graph) when the batch has no object.
        """
        if GRID_POINTS in batch:
            merged = split_output(logits)[0][:, 0, :1]  # (B, 1, h, w)
            return segmentation_loss(merged.clamp(min=GRID_LOSS_FLOOR), batch["target"].to(merged.device), 2)
        masks, iou_pred = split_output(logits)
        valid = batch["object_valid"].to(masks.device)
        if not valid.any():
            return logits.sum() * 0.0
        cand, pred = masks[valid], iou_pred[valid]  # (K, M, h, w), (K, M)
        target = batch["object_target"].to(masks.device)[valid]  # (K, h, w)
        trained = cand.mean(dim=1, keepdim=True) if self.multimask == "mean" else cand
        per = candidate_losses(trained, target)  # (K, M')
        mask_loss = per.min(dim=1).values if self.multimask == "best" else per[:, 0]
        actual = candidate_ious(cand.detach(), target)
        iou_loss = ((pred - actual) ** 2).mean(dim=1)
        return (mask_loss + self.iou_weight * iou_loss).mean()

    # --- prediction ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        image_pixels: np.ndarray,
        prompts: list[ObjectPrompt] | None = None,
        rough: np.ndarray | None = None,
    ) -> np.ndarray:
        """Object probability of every pixel of an image, prompted by the user, a rough mask or the grid.

        Args:
            image_pixels: (H, W, 3) uint8 RGB image.
            prompts: point and/or box prompts in pixels of the image, one per object.
            rough: (H, W) rough mask (non-zero = object); each blob becomes one prompt of this
                method's ``prompt`` kind, through :func:`samadapt.prompts.rough.prompts_from_rough`.

        With neither ``prompts`` nor ``rough``, the image is prompted with the automatic grid
        of evaluation (``eval_grid``, ``eval_iou_threshold``; see the module docstring), every
        point on.

        Returns:
            (H, W) float32 in [0, 1]: the union of the objects' masks; all zeros when the rough
            mask has no blob, or when no grid mask passes the threshold.

        Raises:
            InputError: if both ``prompts`` and ``rough`` are given, the image is not (H, W, 3)
                uint8, a prompt lies outside the image or carries a mask prompt.
        """
        pixels = np.asarray(image_pixels)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise InputError(
                f"predict needs an (H, W, 3) uint8 image, got shape {pixels.shape} and dtype {pixels.dtype}"
            )
        h, w = pixels.shape[:2]
        if prompts is not None and rough is not None:
            raise InputError(
                "predict takes one prompt source: prompts=[ObjectPrompt, ...] or rough=<(H, W) mask>, or neither "
                "for the automatic point grid"
            )
        if prompts is None and rough is None:
            geometry = self.geometry_of(h, w)
            emb = self._embedding_tensors(self.embedding(Sample("predict", pixels, np.ones((h, w), bool))),
                                          squeeze=False)
            grid = self.grid_tensors(geometry)
            merged, _ = self._grid_logits(emb, grid[GRID_POINTS][None], grid[GRID_VALID][None])
            probs = torch.sigmoid(merged.float().cpu())  # (1, h, w)
            return self.to_original(probs, geometry)[0].clamp(0, 1).numpy().astype(np.float32)
        if rough is not None:
            from samadapt.prompts.rough import prompts_from_rough

            if np.shape(rough) != (h, w):
                raise InputError(f"the rough mask has shape {np.shape(rough)}, the image is {(h, w)} (rows, cols)")
            prompts = prompts_from_rough(rough, self.sampling_options())
        prompts = list(prompts or [])
        if not prompts:
            return np.zeros((h, w), dtype=np.float32)
        for p in prompts:
            p.check_inside(h, w)
            if p.mask is not None:
                raise InputError("mask-decoder's predict takes point and box prompts; drop the mask prompt")
        geometry = self.geometry_of(h, w)
        emb = self._embedding_tensors(self.embedding(Sample("predict", pixels, np.ones((h, w), bool))), squeeze=False)
        chosen = []
        for group in prompt_groups(prompts):
            packed = pack_prompts([prompts[i] for i in group], geometry)  # one shape per group: no padding
            points = labels = boxes = None
            if packed.points is not None:
                points = torch.tensor(packed.points)[None].float()
                labels = torch.tensor(packed.labels)[None]
            if packed.boxes is not None:
                boxes = torch.tensor(packed.boxes)[None].float()
            masks, iou = self._decode(emb, points, labels, boxes)
            chosen.append(self.object_logits(pack_output(masks, iou)))
        # the same union as probabilities(): max over objects of the chosen masks' sigmoids
        union = torch.sigmoid(torch.cat(chosen, dim=1)).amax(dim=1)  # (1, h, w)
        return self.to_original(union.float().cpu(), geometry)[0].clamp(0, 1).numpy().astype(np.float32)


def _check_frame(num_classes: int, in_channels: int) -> None:
    """Refuse class and band counts the method cannot train on."""
    if num_classes != 2:
        raise InputError(
            f"mask-decoder segments prompted objects of one class at a time (num_classes=2), got num_classes="
            f"{num_classes}; train one model per class, or use domain-decoder or lora for several classes"
        )
    if in_channels != 3:
        raise InputError(
            f"mask-decoder runs on cached embeddings of 3-band images, got in_channels={in_channels}; "
            "choose 3 bands, or use the lora method, which trains a band adapter"
        )


def _check_prompt_options(o: dict[str, Any]) -> None:
    """Refuse option combinations in which a setting would change nothing (see the class docstring)."""
    prompt = o["prompt"]
    if o["n_pos"] != 1 and prompt != "points":
        raise InputError(
            f"mask-decoder option n_pos={o['n_pos']} sets the positive points of prompt 'points', but prompt is "
            f"{prompt!r} (one interior point or a box); use prompt 'points'"
        )
    if prompt == "box" and o["n_neg"]:
        raise InputError(
            f"mask-decoder option n_neg={o['n_neg']} adds negative points, but prompt 'box' takes no points; "
            "use prompt 'point' or 'points'"
        )
    if o["erode"] and not (prompt == "points" and o["n_pos"] >= 2):
        raise InputError(
            f"mask-decoder option erode={o['erode']} keeps sampled positive points inside the object, which needs "
            f"prompt 'points' with n_pos >= 2 (the first point is always the deepest); got prompt {prompt!r} "
            f"with n_pos={o['n_pos']}"
        )
    if o["box_noise"] and prompt != "box":
        raise InputError(
            f"mask-decoder option box_noise={o['box_noise']} (perturbation) shifts box prompts, but prompt is "
            f"{prompt!r}; set box_noise=0 or prompt=box"
        )
