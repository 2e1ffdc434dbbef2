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

from samadapt.methods.mask_decoder.decoding import PREDICT_CHUNK, AdaptedDecoder
from samadapt.methods.mask_decoder.method import PROMPT_MODES, MaskDecoderMethod
from samadapt.methods.mask_decoder.outputs import (
    GRID_LOSS_FLOOR,
    GRID_POINTS,
    GRID_VALID,
    OFF_LOGIT,
    MultimaskMode,
    pack_output,
    split_output,
)

__all__ = [
    "GRID_LOSS_FLOOR",
    "GRID_POINTS",
    "GRID_VALID",
    "OFF_LOGIT",
    "PREDICT_CHUNK",
    "PROMPT_MODES",
    "AdaptedDecoder",
    "MaskDecoderMethod",
    "MultimaskMode",
    "pack_output",
    "split_output",
]
