"""The ``encoder-adapter`` method: a U-Net's encoder feeding SAM's frozen decoder (see
:mod:`samadapt.methods.encoder_adapter`).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samadapt.errors import InputError
from samadapt.imagery.preprocess import coords_to_model
from samadapt.methods._common import candidate_ious, candidate_losses, freeze, segmentation_loss
from samadapt.methods.base import AdaptationMethod, Batch, Sample
from samadapt.methods.encoder_adapter.parts import (
    NO_OBJECT,
    PARTS,
    UNET_FRACTION,
    PromptSource,
    Schedule,
    Stage,
    check_options,
    class_regions,
    embedding_slots,
)
from samadapt.methods.options import Option, check_flag
from samadapt.methods.unet import UNet, unet_input
from samadapt.prompts.sampling import interior_point
from samadapt.prompts.types import IGNORE

if TYPE_CHECKING:
    from samadapt.models.loading import LoadedModel


class EncoderAdapterMethod(AdaptationMethod):
    """A U-Net encoder + 1x1 convolutions feeding SAM's frozen prompt encoder and mask decoder.

    The default ``schedule="two-stage"`` follows the encoder-adaptation abstract: the first
    ``unet_fraction`` of the epochs train the U-Net alone on the data (stage one); the rest
    train only the 1x1 convolutions that map its encoder into SAM's embedding space, with the
    U-Net, SAM's prompt encoder and SAM's mask decoder all frozen (stage two). Each object is
    prompted with one point on it, and in training the candidate of lowest loss is the one
    trained, as in the abstract. What differs from it: the point is the region's interior
    point (the pixel deepest inside it, which a centroid is not always on); at prediction the
    candidate of highest *predicted* IoU is taken, where the abstract took the one of highest
    IoU against the ground truth, which prediction does not have; and SAM-HQ and SAM 2 get
    extra 1x1 convolutions for the other tensors their decoders read.

    ``schedule="joint"`` trains the U-Net and the 1x1 convolutions together from the start,
    on ``unet_weight`` x U-Net loss + ``sam_weight`` x SAM's loss, SAM's loss flowing into the
    U-Net unless ``detach_features``.

    The training loop calls :meth:`begin_epoch` before each epoch; a loop that never does
    trains jointly (with a warning).

    Args:
        base: the loaded SAM-family model; its parameters are frozen (``requires_grad=False``).
        num_classes: classes including background.
        in_channels: bands of the input; the U-Net takes any count (SAM's own encoder is unused).
        width: channels of the U-Net's first level.
        depth: the U-Net's poolings; the U-Net's input side must be a multiple of ``2**depth``.
        unet_scale: side of the U-Net's input as a fraction of the model input size.
        level: U-Net encoder level mapped to ``image`` (and SAM-HQ's ``vit_0``); -1 = bottleneck.
        max_objects: most objects (prompts) per image; more regions are subsampled.
        min_area: smallest region prompted, in pixels of the frame it is found in (the original
            image for ground truth, the output frame for the U-Net's prediction).
        unet_weight: weight of the U-Net's own segmentation loss (stage one, or joint).
        sam_weight: weight of the loss of SAM's masks (stage two, or joint).
        iou_weight: weight of the error of SAM's IoU predictions against the candidates' IoUs
            (stage two, or joint).
        detach_features: joint schedule only: train the 1x1 convolutions only through the SAM
            path, so the U-Net learns from its own loss alone.
        eval_prompts: where prompts come from outside training: "unet" (the U-Net's predicted
            regions) or "truth" (ground-truth regions, an oracle; needs labelled samples).
            :meth:`use_oracle_prompts` switches it.
        schedule: "two-stage" (the abstract's) or "joint".
        unet_fraction: two-stage schedule only: the share of the epochs that train the U-Net
            alone; each stage gets at least one epoch.

    Raises:
        InputError: on an option out of range, or one that changes nothing with the chosen
            schedule.
    """

    name = "encoder-adapter"
    takes_prompts = True
    output_scale = 0.25
    OPTIONS: ClassVar[dict[str, Option]] = {
        "width": Option(int, 16, "channels of the U-Net's first level, doubled at each pooling", low=1),
        "depth": Option(int, 3, "poolings of the U-Net; its input side must be a multiple of 2**depth", low=1),
        "unet_scale": Option(float, 0.5, "side of the U-Net's input as a fraction of the model input side",
                             low=0, high=1, low_open=True),
        "level": Option(int, -1, "U-Net encoder level mapped into SAM's image embedding (0 to depth; -1: the "
                                 "bottleneck)"),
        "max_objects": Option(int, 8, "most objects (point prompts) per image", low=1),
        "min_area": Option(int, 4, "smallest region prompted, in pixels", low=1),
        "unet_weight": Option(float, 1.0, "weight of the U-Net's own loss (stage one, or joint)", low=0),
        "sam_weight": Option(float, 1.0, "weight of the loss of SAM's masks (stage two, or joint)", low=0),
        "iou_weight": Option(float, 0.0, "weight of the error of SAM's IoU predictions (stage two, or joint)",
                             low=0),
        "detach_features": Option(bool, False, "joint schedule only: SAM's loss trains the 1x1 convolutions but "
                                               "not the U-Net"),
        "eval_prompts": Option(str, "unet", "prompts outside training: the U-Net's predicted regions, or the "
                                            "ground truth's", choices=get_args(PromptSource)),
        "schedule": Option(str, "two-stage", "train the U-Net, then the 1x1 convolutions (the encoder-adaptation "
                                             "abstract), or both at once", choices=get_args(Schedule)),
        "unet_fraction": Option(float, UNET_FRACTION, "two-stage schedule only: share of the epochs that train the "
                                                      "U-Net alone", low=0, high=1, low_open=True, high_open=True),
    }

    def __init__(self, base: LoadedModel, *, num_classes: int = 2, in_channels: int = 3, width: int = 16,
                 depth: int = 3, unet_scale: float = 0.5, level: int = -1, max_objects: int = 8, min_area: int = 4,
                 unet_weight: float = 1.0, sam_weight: float = 1.0, iou_weight: float = 0.0,
                 detach_features: bool = False, eval_prompts: PromptSource = "unet",
                 schedule: Schedule = "two-stage", unet_fraction: float = 0.5, **options: Any) -> None:
        super().__init__(base, num_classes=num_classes, in_channels=in_channels, width=width, depth=depth,
                         unet_scale=unet_scale, level=level, max_objects=max_objects, min_area=min_area,
                         unet_weight=unet_weight, sam_weight=sam_weight, iou_weight=iou_weight,
                         detach_features=detach_features, eval_prompts=eval_prompts, schedule=schedule,
                         unet_fraction=unet_fraction, **options)
        o = self.options
        depth = o["depth"]
        self.unet = UNet(in_channels, self.out_channels, base=o["width"], depth=depth)
        check_options(self.unet, self.preprocessing.size, o)
        #: Side of the U-Net's square input in pixels.
        self.unet_side = round(self.preprocessing.size * o["unet_scale"])
        self.max_objects, self.min_area = o["max_objects"], o["min_area"]
        self.unet_weight, self.sam_weight, self.iou_weight = o["unet_weight"], o["sam_weight"], o["iou_weight"]
        self.detach_features = o["detach_features"]
        self.eval_prompts: PromptSource = o["eval_prompts"]
        self.schedule: Schedule = o["schedule"]
        self.unet_fraction = o["unet_fraction"]
        #: What training trains now (set by :meth:`begin_epoch`); None until the loop says.
        self.stage: Stage | None = None
        self._warned = False
        freeze(base.model)
        self.slots = embedding_slots(base)
        main_level = o["level"] % (depth + 1)
        self.levels: dict[str, int] = {}
        for slot in self.slots:
            if slot.key.startswith("high_res"):  # the U-Net level nearest the map's resolution
                self.levels[slot.key] = min(max(round(math.log2(self.unet_side / slot.side)), 0), depth)
            else:
                self.levels[slot.key] = main_level
        self.adapter = nn.ModuleDict(
            {s.key: nn.Conv2d(self.unet.widths[self.levels[s.key]], s.channels, kernel_size=1) for s in self.slots}
        )

    # --- stages ---------------------------------------------------------------------------------
    def stage_for_epoch(self, epoch: int, epochs: int) -> Stage:
        """What epoch ``epoch`` (from 0) of a run of ``epochs`` trains.

        Two-stage: "unet" for the first ``round(epochs * unet_fraction)`` epochs (at least 1,
        at most ``epochs - 1``), then "adapter"; joint: always "joint".

        Raises:
            InputError: if the two-stage schedule is given fewer than 2 epochs, or the epoch
                lies outside the run.
        """
        if not 0 <= epoch < epochs:
            raise InputError(f"epoch {epoch} lies outside a run of {epochs} epochs (0 to {epochs - 1})")
        if self.schedule == "joint":
            return "joint"
        return "unet" if epoch < self.selection_start(epochs) else "adapter"

    def selection_start(self, epochs: int) -> int:
        """The first epoch of stage two (two-stage), or 0 (joint).

        Until stage two the 1x1 convolutions are untrained, so the adapted model's validation
        scores of stage one say nothing about the final model; the training loop keeps the
        best weights, and counts patience, from this epoch on.

        Raises:
            InputError: if the two-stage schedule is given fewer than 2 epochs.
        """
        if self.schedule == "joint":
            return 0
        if epochs < 2:
            raise InputError(
                f"encoder-adapter's two-stage schedule needs at least 2 epochs (one per stage), got {epochs}; "
                "train longer or use --option schedule=joint"
            )
        return min(max(round(epochs * self.unet_fraction), 1), epochs - 1)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Switch to the stage of this epoch (see :meth:`stage_for_epoch`); the training loop calls it."""
        self.stage = self.stage_for_epoch(epoch, epochs)
        self.train(self.training)

    def train(self, mode: bool = True) -> EncoderAdapterMethod:
        """Training or evaluation mode; in stage two the frozen U-Net stays in evaluation mode.

        So its batch-norm statistics stay as stage one left them and it predicts as it will
        after training.
        """
        super().train(mode)
        if mode and getattr(self, "stage", None) == "adapter":
            self.unet.eval()
        return self

    def _training_stage(self) -> Stage | None:
        """The stage of a training step; None in evaluation mode."""
        if not self.training:
            return None
        if self.stage is None:
            if self.schedule == "two-stage" and not self._warned:
                warnings.warn(
                    "encoder-adapter: the training loop did not call begin_epoch(epoch, epochs), so the two-stage "
                    "schedule cannot tell its stages apart; this run trains the U-Net and the 1x1 convolutions "
                    "jointly",
                    stacklevel=2,
                )
                self._warned = True
            return "joint"
        return self.stage

    # --- ground truth at test time -------------------------------------------------------------
    def use_oracle_prompts(self, on: bool) -> None:
        """Prompt evaluation with the ground truth's regions (True) or the U-Net's predicted ones (False).

        Sets ``eval_prompts`` to ``"truth"`` or ``"unet"``, in ``options`` too, so that
        ``config()`` rebuilds a method that evaluates the same way. Training prompts always
        come from the ground truth; :func:`compare_baselines` takes its own prompt source.

        Args:
            on: True for oracle prompts from the target being scored.

        Raises:
            InputError: if ``on`` is not a bool.
        """
        self.eval_prompts = "truth" if check_flag(on, "use_oracle_prompts") else "unet"
        self.options["eval_prompts"] = self.eval_prompts

    @property
    def oracle(self) -> bool:
        """True when evaluation prompts come from the ground truth (``eval_prompts="truth"``)."""
        return self.eval_prompts == "truth"

    # --- inputs ---------------------------------------------------------------------------------
    def make_inputs(self, sample: Sample, *, train: bool, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Tensors of one sample; prompts from the ground truth in training, else per ``eval_prompts``.

        Returns:
            ``image`` (in_channels, s, s) normalised, s = S x ``unet_scale``; ``hw`` (2,) long resized rows, cols;
            ``points`` (max_objects, 2) float (x, y) in the model-input frame; ``valid``
            (max_objects,) float 1 for real objects (first); ``classes`` (max_objects,) long;
            ``from_unet`` () float, 1 when forward takes prompts from the U-Net; when labelled
            ``target`` (side, side) long; in training ``object_targets`` (max_objects, side, side)
            long, 1 = the object, 0 = elsewhere, 255 = ignore.

        Raises:
            InputError: if ground-truth prompts are needed and the sample has no target.
        """
        return self.inputs(sample, prompts="truth" if train else self.eval_prompts, train=train, rng=rng)

    def inputs(self, sample: Sample, *, prompts: PromptSource, train: bool = False,
               rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """:meth:`make_inputs` with an explicit prompt source (``compare_baselines`` uses it).

        Args:
            sample: the image, labelled for ``prompts="truth"``.
            prompts: "truth" (the target's regions) or "unet" (found in :meth:`forward`).
            train: add ``object_targets`` and subsample regions beyond ``max_objects`` at random.
            rng: the generator for that subsampling (largest regions first without it).
        """
        image, geometry = unet_input(sample, self.preprocessing, self.in_channels)
        if self.unet_side != image.shape[-1]:
            image = F.interpolate(image[None], (self.unet_side, self.unet_side), mode="area")[0]
        m = self.max_objects
        out = {"image": image, "hw": torch.tensor(geometry.resized_hw, dtype=torch.long),
               "points": torch.zeros(m, 2), "valid": torch.zeros(m), "classes": torch.zeros(m, dtype=torch.long),
               "from_unet": torch.tensor(float(prompts == "unet"))}
        if sample.target is not None:
            out["target"] = self.target_tensor(sample.target, geometry)
        if prompts == "unet":
            return out
        if sample.target is None:
            raise InputError(f"{sample.stem} has no target, but ground-truth prompts need one; use prompts='unet'")
        objects = self._truth_objects(sample.target, rng if train else None)
        object_targets = torch.full((m, self.output_side, self.output_side), IGNORE, dtype=torch.long)
        for i, (region, class_id) in enumerate(objects):
            out["points"][i] = torch.from_numpy(coords_to_model(np.array(interior_point(region)), geometry))
            out["valid"][i] = 1.0
            out["classes"][i] = class_id
            if train:
                own = np.where(sample.target == IGNORE, IGNORE, region).astype(np.uint8)
                object_targets[i] = self.target_tensor(own, geometry)
        if train:
            out["object_targets"] = object_targets
        return out

    def _truth_objects(self, target: np.ndarray, rng: np.random.Generator | None) -> list[tuple[np.ndarray, int]]:
        """(region, class id) of the target's regions: largest first, or a random subset when ``rng``."""
        found = class_regions(target, self.num_classes, self.min_area)
        if len(found) <= self.max_objects:
            return found
        if rng is None:
            return found[: self.max_objects]
        keep = np.sort(rng.choice(len(found), size=self.max_objects, replace=False))
        return [found[i] for i in keep]

    # --- model ----------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, out_channels, side, side) logits: the union of SAM's masks, or the U-Net's without objects.

        ``batch`` holds the stacked tensors of :meth:`make_inputs`. Rows with ``from_unet`` take
        their prompts from the U-Net's prediction. In training mode with ``object_targets``,
        each object's candidate of lowest loss is chosen, else the highest predicted IoU.
        Training in stage one runs the U-Net alone (its logits are the output); in stage two
        the U-Net runs without gradient.
        """
        stage = self._training_stage()
        x = batch["image"]
        if x.shape[-1] != self.unet_side:
            x = F.interpolate(x, (self.unet_side, self.unet_side), mode="area")
        side = self.output_side
        with torch.set_grad_enabled(torch.is_grad_enabled() and stage != "adapter"):
            feats = self.unet.encode(x)
            unet_logits = F.interpolate(self.unet.decode(feats), (side, side), mode="area")
        points, valid, classes = batch["points"].float(), batch["valid"] > 0, batch["classes"].long()
        from_unet = batch["from_unet"] > 0
        if bool(from_unet.any()):
            p2, v2, c2 = self._unet_prompts(unet_logits.detach(), batch["hw"])
            points = torch.where(from_unet[:, None, None], p2, points)
            valid = torch.where(from_unet[:, None], v2, valid)
            classes = torch.where(from_unet[:, None], c2, classes)
        n = 0 if stage == "unet" else int(valid.sum(1).max())  # stage one does not run SAM
        parts: dict[str, torch.Tensor | str | None] = {
            "unet": unet_logits, "points": points[:, :n], "valid": valid[:, :n], "classes": classes[:, :n],
            "object_loss": None, "iou_loss": None, "stage": stage,
        }
        if n == 0:
            out = unet_logits + 0.0  # a new tensor, so the parts attribute is not put on the U-Net's logits
        else:
            masks, iou = self._decode(self._embeddings(feats), points[:, :n])
            if self.training and "object_targets" in batch:
                losses = candidate_losses(masks, batch["object_targets"][:, :n])
                pick = losses.detach().argmin(-1)
                parts["object_loss"] = losses.gather(-1, pick[..., None])[..., 0]
                if self.iou_weight > 0:
                    # SAM's own IoU-head objective: predict each candidate's actual IoU, so that
                    # choosing the highest predicted IoU at prediction finds the trained mask
                    actual = candidate_ious(masks.detach(), batch["object_targets"][:, :n])
                    parts["iou_loss"] = ((iou - actual) ** 2).mean(-1)
            else:
                pick = iou.argmax(-1)
            index = pick[:, :, None, None, None].expand(-1, -1, 1, *masks.shape[-2:])
            chosen = masks.gather(2, index)[:, :, 0]
            out = self._union(chosen, valid[:, :n], classes[:, :n], unet_logits)
        setattr(out, PARTS, parts)
        return out

    def _embeddings(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for slot in self.slots:
            f = feats[self.levels[slot.key]]
            e = self.adapter[slot.key](f.detach() if self.detach_features else f)
            if e.shape[-1] != slot.side or e.shape[-2] != slot.side:
                e = F.interpolate(e, (slot.side, slot.side), mode="bilinear", align_corners=False)
            out[slot.key] = e.permute(0, 2, 3, 1) if slot.channels_last else e
        return out

    def _decode(self, emb: dict[str, torch.Tensor], points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's 3 candidate masks (B, N, 3, side, side) and predicted IoUs (B, N, 3), with autograd."""
        dev, model = self.base.device, self.base.model
        emb = {k: v.to(dev) for k, v in emb.items()}
        kwargs: dict[str, torch.Tensor | bool] = {
            "input_points": points[:, :, None].to(dev),
            "input_labels": torch.ones(points.shape[:2] + (1,), dtype=torch.long, device=dev),
            "multimask_output": True,
        }
        if self.base.family == "sam2":
            res = model(image_embeddings=[emb["high_res_0"], emb["high_res_1"], emb["image"]], **kwargs)
        elif self.base.family == "sam-hq":
            res = model(image_embeddings=emb["image"], intermediate_embeddings=[emb["vit_0"]], **kwargs)
        else:
            res = model(image_embeddings=emb["image"], **kwargs)
        masks = res.pred_masks.float().to(points.device)
        if masks.shape[-1] != self.output_side:
            b, n, k = masks.shape[:3]
            masks = F.interpolate(masks.flatten(0, 2)[:, None], (self.output_side,) * 2, mode="bilinear",
                                  align_corners=False).reshape(b, n, k, self.output_side, self.output_side)
        return masks, res.iou_scores.float().to(points.device)

    def _union(self, chosen: torch.Tensor, valid: torch.Tensor, classes: torch.Tensor,
               fallback: torch.Tensor) -> torch.Tensor:
        """Objects' (B, N, h, w) logits -> (B, out_channels, h, w); images without objects take ``fallback``."""
        def merged(which: torch.Tensor) -> torch.Tensor:
            return torch.where(which[:, :, None, None], chosen, torch.full_like(chosen, NO_OBJECT)).amax(1)

        if self.out_channels == 1:
            out = merged(valid)[:, None]
        else:
            out = torch.stack([torch.zeros_like(chosen[:, 0])]
                              + [merged(valid & (classes == k)) for k in range(1, self.num_classes)], dim=1)
        return torch.where(valid.any(1)[:, None, None, None], out, fallback)

    def _unet_prompts(self, logits: torch.Tensor, hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompts from the U-Net's predicted regions: points (B, M, 2), valid (B, M) bool, classes (B, M)."""
        b, m, side = logits.shape[0], self.max_objects, logits.shape[-1]
        scale = self.preprocessing.size / side
        points, valid = torch.zeros(b, m, 2), torch.zeros(b, m, dtype=torch.bool)
        classes = torch.zeros(b, m, dtype=torch.long)
        labels = (logits[:, 0] > 0).long() if self.out_channels == 1 else logits.argmax(1)
        for i in range(b):
            label = labels[i].cpu().numpy().astype(np.uint8)
            rows, cols = (math.ceil(int(v) / scale) for v in hw[i])
            label[rows:], label[:, cols:] = 0, 0  # the padding is never an object
            found = class_regions(label, self.num_classes, self.min_area)
            for j, (region, class_id) in enumerate(found[:m]):
                x, y = interior_point(region)
                # the centre of the output pixel, in model-input pixel indices
                points[i, j] = torch.tensor([(x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5])
                valid[i, j], classes[i, j] = True, class_id
        return points.to(logits.device), valid.to(logits.device), classes.to(logits.device)

    # --- training -------------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The loss of what trains now.

        In training it sums the terms of the parts that train in the current stage:
        ``unet_weight`` x the U-Net's loss (stage one, joint), and ``sam_weight`` x the mean loss
        of the chosen object masks + ``iou_weight`` x the error of SAM's IoU predictions (stage
        two, joint); without per-object targets (prompts from the U-Net) the SAM term is the
        segmentation loss of the union. In evaluation mode the joint schedule gives the same
        sum over both parts, and the two-stage schedule the segmentation loss of the output,
        the adapted model's own, so that validation losses of both stages compare.
        """
        parts = getattr(logits, PARTS, None)
        if parts is None:
            logits = self.forward(batch)
            parts = getattr(logits, PARTS)
        target = batch["target"]
        stage = parts["stage"]
        if stage is None and self.schedule == "two-stage":
            return segmentation_loss(logits, target, self.num_classes)
        terms = []
        if stage in (None, "joint", "unet"):
            terms.append(self.unet_weight * segmentation_loss(parts["unet"], target, self.num_classes))
        valid = parts["valid"]
        if stage in (None, "joint", "adapter") and bool(valid.any()):
            if parts["object_loss"] is not None:
                terms.append(self.sam_weight * parts["object_loss"][valid].mean())
                if parts["iou_loss"] is not None:
                    terms.append(self.iou_weight * parts["iou_loss"][valid].mean())
            else:
                terms.append(self.sam_weight * segmentation_loss(logits, target, self.num_classes))
        if not terms:  # stage two on a batch without objects: nothing to learn, but a graph to go back through
            return sum((p.sum() for p in self.adapter.parameters()), torch.zeros((), device=logits.device)) * 0.0
        return sum(terms[1:], terms[0])

    # --- baselines ------------------------------------------------------------------------------
    def sam_alone(self, sample: Sample, points: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The frozen SAM with its own image encoder and the given prompts.

        Args:
            sample: a 3-band image.
            points: (N, 2) (x, y) in the model-input frame, one per object.
            classes: (N,) class id of each object.

        Returns:
            (out_channels, side, side) logits: the union of the highest-IoU masks, background
            where there is no object.
        """
        from samadapt.models.sam import DecoderPrompts, decode

        side = self.output_side
        background = torch.full((1, self.out_channels, side, side), NO_OBJECT)
        if self.out_channels > 1:
            background[:, 0] = 0.0
        if len(points) == 0:
            return background[0]
        prompts = DecoderPrompts(points=points[:, None].cpu().numpy(), labels=np.ones((len(points), 1), np.int64))
        masks, iou = decode(self.base, self.embedding(sample), prompts)
        chosen = masks[torch.arange(len(points)), iou.argmax(1)]
        if chosen.shape[-1] != side:
            chosen = F.interpolate(chosen[:, None], (side, side), mode="bilinear", align_corners=False)[:, 0]
        valid = torch.ones(1, len(points), dtype=torch.bool)
        return self._union(chosen[None], valid, classes[None].cpu(), background)[0]
