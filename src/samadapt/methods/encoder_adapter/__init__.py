"""``encoder-adapter`` (the encoder-adaptation abstract): a U-Net's encoder mapped into SAM's embedding space.

A :class:`~samadapt.methods.unet.UNet` is trained on the data with its own segmentation
loss. It sees the image in SAM's frame (resized, normalised, padded) reduced to
``unet_scale`` of the model input S (half by default, a quarter of the compute), so with
the default depth of 3 its bottleneck lies on SAM's S/16 embedding grid. One encoder level
(the bottleneck by default) goes through a trainable 1x1 convolution, and a bilinear resize
where the grids differ, into the tensors SAM's mask decoder reads in place of its image
encoder's output:

* SAM: ``image`` (C, S/16, S/16);
* SAM-HQ: ``image`` and the early ViT features ``vit_0`` (S/16, S/16, C_vit), each from
  its own 1x1 convolution of the same level;
* SAM 2: ``image`` and the two high-resolution maps at S/4 and S/8, each from the U-Net
  level nearest that resolution.

SAM's prompt encoder and mask decoder stay frozen. Training runs in two stages by default,
as in the abstract: first the U-Net alone on its own loss, then only the 1x1 convolutions,
through SAM's frozen decoder, with the U-Net frozen too (its batch-norm statistics
included). The training loop says which epoch it is in through
:meth:`EncoderAdapterMethod.begin_epoch`. ``schedule="joint"`` instead trains everything at
once, with SAM's loss flowing through the 1x1 convolutions into the U-Net as well.

Each object is prompted with one point, the interior point
(:func:`samadapt.prompts.sampling.interior_point`) of its region: ground-truth regions in
training, the U-Net's own predicted regions at prediction. In training each object's mask
is the one of SAM's three candidates with the lowest loss; at prediction, the one with the
highest predicted IoU. The output is the union of the objects' masks (per class, with a
fixed background logit of 0 for several classes); an image without any object gets the
U-Net's prediction. The loss of a training step sums the terms of what trains in it:
``unet_weight`` x the U-Net's loss (stage one, and joint training), and ``sam_weight`` x the
mean loss of the chosen masks against their objects plus ``iou_weight`` x the squared error
of SAM's IoU predictions (stage two, and joint training). The IoU term is off by default: a
frozen decoder whose IoU head misranks the adapted masks can be taught to rank them, at some
cost to the masks.

The method's logits carry their parts (U-Net logits, prompts, per-object losses) as the
attribute ``encoder_adapter_parts``, so :meth:`EncoderAdapterMethod.loss` does not run the
model twice; without it the loss runs :meth:`forward` again.
"""

from samadapt.methods._common import candidate_ious, candidate_losses
from samadapt.methods.encoder_adapter.baselines import compare_baselines
from samadapt.methods.encoder_adapter.method import EncoderAdapterMethod
from samadapt.methods.encoder_adapter.parts import (
    NO_OBJECT,
    PARTS,
    EmbeddingSlot,
    PromptSource,
    Schedule,
    Stage,
    class_regions,
    embedding_slots,
)

__all__ = [
    "NO_OBJECT",
    "PARTS",
    "EmbeddingSlot",
    "EncoderAdapterMethod",
    "PromptSource",
    "Schedule",
    "Stage",
    "candidate_ious",
    "candidate_losses",
    "class_regions",
    "compare_baselines",
    "embedding_slots",
]
