"""``mask-decoder`` (the river fine-tuning tutorial): fine-tune SAM's mask decoder with prompts made from ground truth.

The image encoder and the prompt encoder stay frozen; only a copy of the mask decoder trains
(the base model is never modified, so the untrained decoder stays available beside the
trained one). Each image is encoded once, through the embedding cache.

Training prompts come from the ground-truth mask: one prompt per connected region (largest
first, at most ``max_objects``), a box, the interior point or several points, drawn with
:func:`samadapt.prompts.sampling.prompts_from_mask` from a seed taken from the sample's ``rng``, so
the same generator state gives the same prompts. As in the river fine-tuning tutorial,
training boxes can be jittered (``box_noise``, which the tutorial calls ``perturbation``) and
sampled points kept away from the object's edge by an erosion (``erode``). Each prompted
region is its own target.
At prediction time prompts come from the user (:class:`~samadapt.prompts.types.ObjectPrompt`) or
from a rough mask (:func:`samadapt.prompts.rough.prompts_from_rough`), or, with neither, from the
automatic grid below, see :meth:`predict`.

Evaluation (``make_inputs(..., train=False)``) reads no ground truth to prompt, unless asked:
by default each image is prompted with an automatic grid of ``eval_grid`` x ``eval_grid``
single positive points (cell centres over the image, as in :mod:`samadapt.predict.automatic`; points
on no-data pixels are switched off), each point is decoded by the adapted decoder into one
mask (chosen by the ``multimask`` rule, as for every prompt), the masks whose predicted IoU
is at least ``eval_iou_threshold`` (0.88 by default, the automatic mode's ``pred_iou_thresh``)
are kept, and a pixel's object probability is the largest over the kept masks (0 where none
is kept). The whole ground truth (0, 1, 255) is the target.
:meth:`MaskDecoderMethod.use_oracle_prompts` (True) switches evaluation to prompts made from
the ground truth, as in training but without ``box_noise``; :attr:`MaskDecoderMethod.oracle`
then says so. The river fine-tuning tutorial's dataset class makes every prompt from the label
mask, for its validation loader too; at inference, where there is no label, it estimates a
rough mask instead (``predict(pixels, rough=...)`` here).

Binary only: the method segments prompted objects of one class (``num_classes=2``); train
one model per class, or use ``domain-decoder`` / ``lora`` for several classes at once.

Batch keys made by :meth:`MaskDecoderMethod.make_inputs` in training and with oracle prompts
(B images, N = ``max_objects``):

* ``embedding`` (B, C, e, e) and the family's extra embedding tensors (``high_res_*``, ``vit_*``);
* ``boxes`` (B, N, 4) XYXY, or ``points`` (B, N, P, 2) (x, y) and ``labels`` (B, N, P) with
  -10 for padding points, all in the model-input frame;
* ``object_valid`` (B, N) bool, False for padding objects;
* ``object_target`` (B, N, h, w) long: 1 on the object's region, 0 elsewhere, 255 ignore;
* ``target`` (B, h, w) long: the union of the prompted regions (unprompted regions beyond
  ``max_objects`` are 255, since no prompt asked for them).

Batch keys at evaluation without oracle prompts (G = ``eval_grid`` ** 2, the same for every
image, so batches stack):

* the embedding tensors, as above;
* ``grid_points`` (B, G, 2) (x, y) in the model-input frame, row by row over the image;
* ``grid_valid`` (B, G) bool, False for points on no-data pixels;
* ``target`` (B, h, w) long: the whole ground truth (when labelled).

What ``forward`` returns: (B, N, M + 1, h, w), where ``[:, :, :M]`` are the M candidate mask
logits of each object (M = 3, or 1 with ``multimask="single"``; padding objects hold
-1e4) and plane ``M`` carries the decoder's predicted IoU of each candidate at
``[:, :, M, 0, :M]`` (zeros elsewhere). For a grid batch, N = M = 1: the one "object" is the
merged mask (per pixel, the largest logit of the kept masks; -1e4 where none is kept) and its
IoU is the highest predicted IoU among the kept masks (0 when none). :func:`split_output`
unpacks it; :meth:`loss` and :meth:`probabilities` both take it as it is. Keeping the IoUs
inside one plain tensor keeps the method stateless and the output usable by a loop that only
knows tensors.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from samadapt.errors import InputError
from samadapt.imagery.preprocess import Geometry, boxes_to_model, coords_to_model
from samadapt.methods.base import (
    IGNORE,
    AdaptationMethod,
    Batch,
    Option,
    Sample,
    check_flag,
    freeze,
    segmentation_loss,
    target_in_frame,
)
from samadapt.models.loading import LoadedModel
from samadapt.predict.automatic import point_grid
from samadapt.prompts.sampling import prompts_from_mask, regions
from samadapt.prompts.types import ObjectPrompt

PromptKind = Literal["box", "point", "points"]
MultimaskMode = Literal["best", "mean", "single"]

#: Label of a padding point: transformers' prompt encoder gives it a zero embedding.
PAD_LABEL = -10
#: Logit given to padding objects, so that their probability is exactly 0.
OFF_LOGIT = -1.0e4
#: Objects (prompts x images) decoded per decoder call in :meth:`MaskDecoderMethod.predict` and
#: in the evaluation grid; bounds memory.
PREDICT_CHUNK = 64
#: Batch key of the evaluation grid's points; its presence marks a grid batch.
GRID_POINTS = "grid_points"
#: Batch key of the grid points' on/off flags.
GRID_VALID = "grid_valid"
#: Smallest logit a grid batch's loss sees: a pixel no kept mask covers (-1e4) counts as -20.
GRID_LOSS_FLOOR = -20.0
#: Mask-decoder parts that never train: SAM 2's conv_s0 / conv_s1 belong to the encoder
#: path (their output is in the cached embedding) and its object-score head gets no loss.
_FROZEN_PARTS = {"sam2": ("conv_s0", "conv_s1", "pred_obj_score_head")}


class MaskDecoderMethod(AdaptationMethod):
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
                                     "point, or n_pos positive points", choices=get_args(PromptKind)),
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
        prompt: PromptKind = "box",
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
        self.prompt: PromptKind = o["prompt"]
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
        self.mask_decoder = copy.deepcopy(base.model.mask_decoder)
        for p in self.mask_decoder.parameters():
            p.requires_grad_(True)
        for part in _FROZEN_PARTS.get(base.family, ()):
            freeze(getattr(self.mask_decoder, part))
        if base.family == "sam2":
            # In eval mode SAM 2 swaps the single mask for a "stable" multimask candidate;
            # training and prediction must see the same output.
            self.mask_decoder.dynamic_multimask_via_stability = False
        self.mask_decoder.train(self.training)

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
        prompts = prompts_from_mask(target, mode=self.prompt, n_pos=self.n_pos, n_neg=self.n_neg, erode=self.erode,
                                    box_noise=self.box_noise if train else 0.0, seed=seed)
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
            boxes = np.zeros((n, 4))
            for i, p in enumerate(prompts):
                boxes[i] = boxes_to_model(p.box, geometry)  # type: ignore[arg-type]
            return {"boxes": torch.from_numpy(boxes).float()}
        slots = self.points_per_object
        points = np.zeros((n, slots, 2))
        labels = np.full((n, slots), PAD_LABEL, dtype=np.int64)
        for i, p in enumerate(prompts):
            k = min(len(p.points), slots)
            points[i, :k] = coords_to_model(p.points[:k], geometry)
            labels[i, :k] = p.labels[:k]
        return {"points": torch.from_numpy(points).float(), "labels": torch.from_numpy(labels)}

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

    def _decode(
        self,
        embeddings: Batch,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen prompt encoder, then the trainable decoder: (B, N, M, h, w) logits, (B, N, M) IoUs."""
        model, bdev = self.base.model, self.base.device
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(
                input_points=None if points is None else points.to(bdev, torch.float32),
                input_labels=None if labels is None else labels.to(bdev, torch.long),
                input_boxes=None if boxes is None else boxes.to(bdev, torch.float32),
                input_masks=None,
            )
            position = model.get_image_wide_positional_embeddings()
        first = next(self.mask_decoder.parameters())
        dev, dtype = first.device, first.dtype
        image = embeddings["embedding"].to(dev, dtype)
        kwargs: dict[str, Any] = {
            "image_embeddings": image,
            "image_positional_embeddings": position.to(dev, dtype).expand(image.shape[0], -1, -1, -1),
            "sparse_prompt_embeddings": sparse.to(dev, dtype),
            "dense_prompt_embeddings": dense.to(dev, dtype),
            "multimask_output": self.multimask != "single",
        }
        family = self.base.family
        if family == "sam2":
            highres = _numbered(embeddings, "high_res_")
            kwargs["high_resolution_features"] = [embeddings[k].to(dev, dtype) for k in highres]
        elif family == "sam-hq":
            kwargs["hq_token_only"] = False
            kwargs["intermediate_embeddings"] = [embeddings[k].to(dev, dtype) for k in _numbered(embeddings, "vit_")]
        out = self.mask_decoder(**kwargs)
        return out[0], out[1]

    @torch.no_grad()
    def _grid_logits(
        self, embeddings: Batch, points: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every grid point alone and merge the masks whose predicted IoU passes the threshold.

        At most :data:`PREDICT_CHUNK` prompts (points x images) go through the decoder per
        call, and the merge is a running maximum, so memory does not grow with the grid.

        Args:
            embeddings: ``embedding`` (B, C, e, e) and the family's extra tensors.
            points: (B, G, 2) (x, y) in the model-input frame.
            valid: (B, G) bool; switched-off points are never kept.

        Returns:
            (B, h, w) logits, per pixel the largest of the kept masks' (``OFF_LOGIT`` where no
            mask is kept), and (B,) the highest predicted IoU among the kept masks (0 when none).
        """
        b, g = points.shape[:2]
        step = max(1, PREDICT_CHUNK // b)
        merged: torch.Tensor | None = None
        best: torch.Tensor | None = None
        for start in range(0, g, step):
            chunk = points[:, start : start + step]
            n = chunk.shape[1]
            masks, iou = self._decode_points(embeddings, chunk)
            logits, score = self._choose(masks, iou)  # (B, n, h, w), (B, n)
            keep = (score >= self.eval_iou_threshold) & valid[:, start : start + n].to(score.device)
            here = torch.where(keep[:, :, None, None], logits, torch.full_like(logits, OFF_LOGIT)).amax(dim=1)
            top = torch.where(keep, score, torch.zeros_like(score)).amax(dim=1)
            merged = here if merged is None else torch.maximum(merged, here)
            best = top if best is None else torch.maximum(best, top)
        return merged, best  # type: ignore[return-value]

    def _decode_points(self, embeddings: Batch, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Single positive points, each decoded alone without gradients: (B, n, M, h, w) logits, (B, n, M) IoUs.

        With a plain SAM, SAM-HQ or SAM 2 base model on the decoder's device, the points go
        through the fast inference pass of :mod:`samadapt.models.accel.sam_decoder` with the
        adapted decoder (the same arithmetic up to float rounding, and several times faster
        on a CPU than transformers' batched call, which copies the image embedding per
        prompt); otherwise through :meth:`_decode`.

        Args:
            embeddings: ``embedding`` (B, C, e, e) and the family's extra tensors.
            points: (B, n, 2) (x, y) in the model-input frame.
        """
        b, n = points.shape[:2]
        labels = torch.ones((b, n, 1), dtype=torch.long)
        view = self._fast_view()
        if view is None:
            return self._decode(embeddings, points[:, :, None], labels, None)
        from samadapt.models.accel import sam_decoder

        dev = self.base.device
        sparse, _ = self.base.model.prompt_encoder(points[:, :, None].to(dev, torch.float32), labels.to(dev),
                                                   None, None)  # (B, n, T, C)
        valid = torch.ones(sparse.shape[1:3], dtype=torch.bool, device=dev)
        precision = sam_decoder.precision_for(self.base)
        masks, ious = [], []
        for i in range(b):  # the fast pass decodes the prompts of one image per call
            high = tuple(embeddings[k][i : i + 1].to(dev) for k in _numbered(embeddings, "high_res_"))
            vit = embeddings["vit_0"][i : i + 1].to(dev) if "vit_0" in embeddings else None
            m, iou = sam_decoder.decode_sam(view, embeddings["embedding"][i : i + 1].to(dev), sparse[i], valid,
                                            self.multimask != "single", precision,
                                            high or None, vit)  # type: ignore[arg-type]
            masks.append(m.float())
            ious.append(iou.float())
        return torch.stack(masks), torch.stack(ious)

    def _fast_view(self) -> _AdaptedModel | None:
        """The base model seen with the adapted decoder, for the fast pass; None where it cannot be used."""
        from samadapt.models.accel import sam_decoder

        here = next(self.mask_decoder.parameters()).device
        if here != next(self.base.model.parameters()).device or not sam_decoder.supported(self.base.model):
            return None
        if getattr(self, "_fast", None) is None:
            # not a submodule: the base model's parts must stay out of this method's state dict
            object.__setattr__(self, "_fast", _AdaptedModel(self.base.model, self.mask_decoder))
        return self._fast  # type: ignore[no-any-return]

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
        target = batch["object_target"].to(masks.device)[valid][:, None]  # (K, 1, h, w)
        counted = (target != IGNORE).float()
        y = (target == 1).float()
        trained = cand.mean(dim=1, keepdim=True) if self.multimask == "mean" else cand
        per = _dice_bce(trained, y, counted)  # (K, M')
        mask_loss = per.min(dim=1).values if self.multimask == "best" else per[:, 0]
        actual = _iou(cand.detach() > 0, y > 0, counted > 0)
        iou_loss = ((pred - actual) ** 2).mean(dim=1)
        return (mask_loss + self.iou_weight * iou_loss).mean()

    def object_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Each object's chosen mask logits, (B, N, h, w), from :meth:`forward`'s output.

        ``"best"`` takes the candidate of highest predicted IoU, ``"mean"`` the mean of the
        candidates, ``"single"`` the one mask.
        """
        return self._choose(*split_output(logits))[0]

    def _choose(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each object's one mask and its predicted IoU by the ``multimask`` rule.

        Args:
            masks: (B, N, M, h, w) candidate logits.
            iou: (B, N, M) predicted IoUs.

        Returns:
            (B, N, h, w) logits and (B, N) IoUs: the candidate of highest predicted IoU
            (``"best"``), the mean of the candidates' logits and of their IoUs (``"mean"``), or
            the one mask (``"single"``).
        """
        if self.multimask == "mean":
            return masks.mean(dim=2), iou.mean(dim=2)
        if self.multimask == "single":
            return masks[:, :, 0], iou[:, :, 0]
        top = iou.argmax(dim=2)
        index = top[:, :, None, None, None].expand(-1, -1, 1, *masks.shape[-2:])
        return masks.gather(2, index)[:, :, 0], iou.gather(2, top[:, :, None])[:, :, 0]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w): the union (max of sigmoids) of every object's chosen mask, and its complement."""
        p = torch.sigmoid(self.object_logits(logits)).amax(dim=1, keepdim=True)
        return torch.cat([1 - p, p], dim=1)

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
            prompts = prompts_from_rough(rough, mode=self.prompt, n_pos=self.n_pos, n_neg=self.n_neg, erode=self.erode)
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
        for group in _groups(prompts):
            chunk = [prompts[i] for i in group]
            points = labels = boxes = None
            if len(chunk[0].points):
                points = torch.tensor(np.stack([coords_to_model(p.points, geometry) for p in chunk]))[None].float()
                labels = torch.tensor(np.stack([p.labels for p in chunk]))[None]
            if chunk[0].box is not None:
                boxes = torch.tensor(np.stack([boxes_to_model(p.box, geometry) for p in chunk]))[None].float()
            masks, iou = self._decode(emb, points, labels, boxes)
            chosen.append(self.object_logits(pack_output(masks, iou)))
        # the same union as probabilities(): max over objects of the chosen masks' sigmoids
        union = torch.sigmoid(torch.cat(chosen, dim=1)).amax(dim=1)  # (1, h, w)
        return self.to_original(union.float().cpu(), geometry)[0].clamp(0, 1).numpy().astype(np.float32)


class _AdaptedModel:
    """What :func:`samadapt.models.accel.sam_decoder.decode_sam` reads of a model, with the adapted mask decoder.

    The prompt encoder and the image-grid positional embedding are the frozen base model's;
    the mask decoder is the method's trained copy.
    """

    def __init__(self, model: Any, decoder: torch.nn.Module) -> None:
        self.prompt_encoder = model.prompt_encoder
        self.shared_image_embedding = model.shared_image_embedding
        self.get_image_wide_positional_embeddings = model.get_image_wide_positional_embeddings
        self.mask_decoder = decoder


def pack_output(masks: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """Pack (B, N, M, h, w) logits and (B, N, M) predicted IoUs into (B, N, M + 1, h, w).

    Raises:
        InputError: if the mask is narrower than M pixels (no room for the IoUs).
    """
    b, n, m, h, w = masks.shape
    if w < m:
        raise InputError(f"cannot pack {m} IoUs into masks {w} pixels wide")
    plane = F.pad(iou.to(masks.dtype), (0, w - m))[:, :, None, None, :]  # (B, N, 1, 1, w)
    plane = F.pad(plane, (0, 0, 0, h - 1))  # (B, N, 1, h, w)
    return torch.cat([masks, plane], dim=2)


def split_output(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack :func:`pack_output`: (B, N, M, h, w) logits and (B, N, M) predicted IoUs.

    Raises:
        InputError: if the tensor is not 5-D with at least 2 planes per object.
    """
    if output.ndim != 5 or output.shape[2] < 2:
        raise InputError(f"expected mask-decoder output (B, N, M + 1, h, w), got shape {tuple(output.shape)}")
    m = output.shape[2] - 1
    return output[:, :, :m], output[:, :, m, 0, :m]


def _dice_bce(logits: torch.Tensor, y: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Per-mask dice + BCE over counted pixels: logits (K, M, h, w), y and counted (K, 1, h, w) -> (K, M)."""
    y = y.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    n = counted.sum(dim=(-2, -1)).clamp(min=1.0)
    bce = (bce * counted).sum(dim=(-2, -1)) / n
    p = torch.sigmoid(logits) * counted
    yc = y * counted
    dice = 1 - (2 * (p * yc).sum(dim=(-2, -1)) + 1) / (p.sum(dim=(-2, -1)) + yc.sum(dim=(-2, -1)) + 1)
    return bce + dice


def _iou(pred: torch.Tensor, y: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks (K, M, h, w) against (K, 1, h, w) over counted pixels; 1 when both are empty."""
    inter = (pred & y & counted).sum(dim=(-2, -1)).float()
    union = ((pred | y) & counted).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


def _numbered(batch: Batch, prefix: str) -> list[str]:
    """Keys ``prefix0``, ``prefix1``, ... of a batch in numeric order."""
    return sorted((k for k in batch if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))


def _groups(prompts: list[ObjectPrompt]) -> list[list[int]]:
    """Indices of prompts with the same shape (point count, box or not), in chunks of PREDICT_CHUNK.

    Each group is decoded in one call without padding points, which would change the result.
    """
    by_shape: dict[tuple[int, bool], list[int]] = {}
    for i, p in enumerate(prompts):
        by_shape.setdefault((len(p.points), p.box is not None), []).append(i)
    return [g[s : s + PREDICT_CHUNK] for g in by_shape.values() for s in range(0, len(g), PREDICT_CHUNK)]


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
