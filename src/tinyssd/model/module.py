"""The LightningModule: TinySSD, anchor labeling, loss, metrics, optimisation."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from tinyssd.boxes import CHAPTER_DISPLAY_THRESHOLD, CHAPTER_NMS_THRESHOLD, CHAPTER_POS_THRESHOLD, to_pixels
from tinyssd.errors import ConfigError
from tinyssd.model.anchors import ATSS_TOPK, multibox_target
from tinyssd.model.contract import DEFAULT_IMAGE_SIZE, DEFAULT_INPUT_SCALE, DEFAULT_MAX_DETECTIONS, InferenceContract
from tinyssd.model.evaluator import DetectionEvaluator
from tinyssd.model.metrics import BBoxMAE, ClassError
from tinyssd.model.postprocess import multibox_detection_per_image
from tinyssd.model.specs import build, build_optimization, check_module_options, check_spec
from tinyssd.resize import STRETCH

__all__ = ["DEFAULT_LOSS", "DEFAULT_NET", "DEFAULT_OPTIMIZER", "TinySSDModule"]

# The options that are specs of objects (network, loss, optimizer, scheduler), not plain settings.
SPEC_OPTIONS = ("net", "loss", "optimizer", "scheduler")
DEFAULT_NET: dict[str, Any] = {"_target_": "tinyssd.model.net.TinySSD", "num_classes": 1}
DEFAULT_LOSS: dict[str, Any] = {"_target_": "tinyssd.model.loss.MultiBoxLoss"}
DEFAULT_OPTIMIZER: dict[str, Any] = {"_target_": "torch.optim.SGD", "lr": 0.2, "weight_decay": 5e-4}


class TinySSDModule(pl.LightningModule):
    """Trains and evaluates a TinySSD detector.

    The network, loss, optimizer and scheduler are given as Hydra-style specs (plain dicts
    with ``_target_``), so the checkpoint's hyperparameters are plain data that loads with
    ``torch.load(weights_only=True)`` and rebuilds the same model.

    Args:
        net: spec of the network (default: the chapter's TinySSD for one class).
        loss: spec of the loss (default: the chapter's cross-entropy + L1).
        optimizer: spec of the optimizer, built with ``params=`` (default: SGD, lr 0.2, wd 5e-4).
        scheduler: spec of an LR scheduler, built with ``optimizer=`` (tinyssd's also ``steps_per_epoch=``,
            stepped per optimizer step; torch's per epoch); or ``None``.
        nms_threshold, pos_threshold: detection decoding, as in ``multibox_detection``.
        max_detections: detections kept per image for mAP and prediction.
        display_threshold: score at which a detection is shown (the chapter: 0.9).
        channels_last: run convolutions in NHWC memory format (faster on CPUs and GPUs).
        map_backend: torchmetrics mAP backend (``faster_coco_eval`` or ``pycocotools``).
        class_names: names of the object classes, for display.
        image_size: side of the square input the model is trained on (recorded for inference).
        compile: run the network through ``torch.compile`` (worth it for long runs; the first
            steps pay the compilation).
        input_scale: pixel values reach the network in ``[0, input_scale]``. 255 is the chapter's
            input (``read_image(...).float()``, no rescaling): with the first convolution followed
            by batch norm, the scale sets that layer's effective learning rate, so it is part of
            the recipe. 1 feeds ``[0, 1]`` images.
        resize: how pictures were placed on the square input (``stretch`` or ``letterbox``;
            :mod:`tinyssd.resize`), recorded so that prediction places them the same way.
        freeze_backbone: train only the class and box heads: the feature blocks keep their
            weights and batch-norm statistics (fine-tuning a small data set from ``init_from``).
        assigner: how training labels the anchors: ``max_iou`` (the chapter's IoU >= 0.5 matching)
            or ``atss`` (adaptive training sample selection; :mod:`tinyssd.model.anchors`).
        atss_topk: ``atss``: per object and scale, the cells nearest its centre whose anchors are
            candidates (the paper's k = 9).

    Batches are ``(images (B, 3, H, W) uint8, or float in [0, 1], labels (B, G, 5))``.
    """

    def __init__(
        self,
        net: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        nms_threshold: float = CHAPTER_NMS_THRESHOLD,
        pos_threshold: float = CHAPTER_POS_THRESHOLD,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        display_threshold: float = CHAPTER_DISPLAY_THRESHOLD,
        channels_last: bool = True,
        map_backend: str = "faster_coco_eval",
        class_names: list[str] | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        compile: bool = False,
        input_scale: float = DEFAULT_INPUT_SCALE,
        resize: str = STRETCH,
        freeze_backbone: bool = False,
        assigner: str = "max_iou",
        atss_topk: int = ATSS_TOPK,
    ) -> None:
        # Every option but the specs (checked when built), as the signature names them.
        options = {k: v for k, v in locals().items() if k not in ("self", "__class__", *SPEC_OPTIONS)}
        super().__init__()
        check_module_options(**options)
        # Not sent to the logger here: the pipeline logs the whole run config with final metrics.
        self.save_hyperparameters(logger=False)
        # Specs are data (they come back from checkpoints): built from an allowlist, never imported.
        self.net = build("net", net or DEFAULT_NET)
        self.loss_fn = build("loss", loss or DEFAULT_LOSS)
        for kind, spec in (("optimizer", optimizer), ("scheduler", scheduler)):
            if spec:  # checked now, built in configure_optimizers
                check_spec(kind, spec)
        if class_names is not None and len(class_names) != self.net.num_classes:
            raise ConfigError(
                f"class_names has {len(class_names)} names but the network detects {self.net.num_classes} "
                "class(es); give one name per class."
            )
        self.num_classes: int = self.net.num_classes
        self.class_names = class_names or [str(i) for i in range(self.num_classes)]
        if freeze_backbone:
            self.net.blocks.requires_grad_(False)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            # nn.Module.compile: a compiled forward with the same parameters and state_dict keys.
            self.net.compile()
        else:
            # Lightning's model summary runs it (in eval mode) to report FLOPs and layer shapes.
            self.example_input_array = torch.zeros(1, 3, image_size, image_size)

        self.train_class_error, self.val_class_error = ClassError(), ClassError()
        self.train_bbox_mae, self.val_bbox_mae = BBoxMAE(), BBoxMAE()
        self.evaluator = DetectionEvaluator(self.class_names, display_threshold, map_backend)
        # Precision at 101 recall levels (IoU 0.5, all classes) of the last validation epoch.
        self.last_pr_curve: Tensor | None = None
        # The last evaluation (validation or test epoch): metrics, per-class AP, confusion, counts.
        self.last_evaluation: dict[str, Any] | None = None

    @property
    def contract(self) -> InferenceContract:
        """Classes, input and decoding: what running this model needs besides its weights."""
        return InferenceContract.from_hparams(self.hparams, self.class_names)

    def train(self, mode: bool = True) -> TinySSDModule:
        super().train(mode)
        self._keep_backbone_frozen()
        return self

    def _keep_backbone_frozen(self) -> None:
        if self.hparams.get("freeze_backbone"):
            # A frozen backbone keeps its batch-norm statistics too (they were learnt with its weights).
            self.net.blocks.eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning restores each submodule's own mode after a validation run, undoing train()'s.
        self._keep_backbone_frozen()

    # ----------------------------------------------------------------- forward / inference

    def prepare_images(self, images: Tensor) -> Tensor:
        """uint8 ``[0, 255]`` or float ``[0, 1]`` images -> float ``[0, input_scale]`` in the model's layout."""
        scale = float(self.hparams.get("input_scale", DEFAULT_INPUT_SCALE))
        scale = scale / 255 if images.dtype == torch.uint8 else scale
        x = images.float()
        if scale != 1.0:
            x = x.mul_(scale)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.net(self.prepare_images(images))

    @torch.no_grad()
    def detect(
        self, images: Tensor, nms_threshold: float | None = None, max_detections: int | None = None
    ) -> list[dict[str, Tensor]]:
        """Per-image detections: ``boxes`` normalised xyxy (``[0, 1]`` of the input's width and
        height), ``scores``, ``labels`` (0-based class indices); at most ``max_detections`` each."""
        anchors, cls_preds, bbox_preds = self(images)
        return self._decode(anchors, cls_preds, bbox_preds, nms_threshold, max_detections)

    def _decode(self, anchors, cls_preds, bbox_preds, nms_threshold=None, max_detections=None):
        probs = F.softmax(cls_preds.float(), dim=-1).permute(0, 2, 1)
        return multibox_detection_per_image(
            probs,
            bbox_preds,
            anchors,
            nms_threshold=self.hparams.nms_threshold if nms_threshold is None else nms_threshold,
            pos_threshold=self.hparams.pos_threshold,
            max_detections=self.hparams.max_detections if max_detections is None else max_detections,
        )

    def predict_step(self, batch: Tensor | tuple[Tensor, ...], batch_idx: int) -> list[dict[str, Tensor]]:
        """``trainer.predict``: per-image detections with ``boxes`` in pixels (xyxy) of the input images.

        ``batch`` is images ``(B, 3, H, W)`` or a data module's ``(images, labels)``; boxes are in
        the coordinates of those ``H x W`` inputs (as torchvision's detection models return them).
        :meth:`detect` gives the same detections with normalised boxes; :class:`tinyssd.Detector`
        maps them back onto the original pictures.
        """
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        height, width = images.shape[-2:]
        return [{**d, "boxes": to_pixels(d["boxes"], width, height)} for d in self.detect(images)]

    # ----------------------------------------------------------------- steps

    def _shared_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, labels = batch
        anchors, cls_preds, bbox_preds = self(images)
        # Label the anchors against this batch's ground truth (on the batch's device).
        bbox_targets, bbox_mask, cls_targets = self.label_anchors(anchors, labels, images.shape[-2:])
        losses = self.loss_fn(cls_preds, cls_targets, bbox_preds, bbox_targets, bbox_mask, anchors=anchors)
        return {
            **losses,
            "anchors": anchors,
            "cls_preds": cls_preds.detach(),
            "bbox_preds": bbox_preds.detach(),
            "cls_targets": cls_targets,
            "bbox_targets": bbox_targets,
            "bbox_mask": bbox_mask,
        }

    def label_anchors(
        self, anchors: Tensor, labels: Tensor, image_hw: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``multibox_target`` with this model's assigner: offsets ``(B, 4A)``, mask ``(B, 4A)``, classes ``(B, A)``."""
        # ATSS's candidates are the anchors of the atss_topk cells nearest each object on every scale.
        cells = self.hparams.get("atss_topk", ATSS_TOPK)
        return multibox_target(
            anchors,
            labels,
            assigner=self.hparams.get("assigner", "max_iou"),
            level_counts=self.net.anchor_level_counts(*image_hw),
            level_topk=[cells * a for a in self.net.anchors_per_location],
        )

    def _log_losses(self, stage: str, out: dict[str, Tensor], batch_size: int) -> None:
        if stage == "train":
            # Per step for the progress bar, without a cross-process reduction each step.
            self.log("train/loss_step", out["loss"], on_step=True, on_epoch=False, prog_bar=True)
        self.log(f"{stage}/loss", out["loss"], on_epoch=True, on_step=False, batch_size=batch_size, sync_dist=True)
        for part in ("cls", "bbox", "iou"):
            if part not in out:
                continue
            self.log(
                f"{stage}/loss_{part}", out[part], on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True
            )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        out = self._shared_step(batch)
        self.train_class_error.update(out["cls_preds"], out["cls_targets"])
        self.train_bbox_mae.update(out["bbox_preds"], out["bbox_targets"], out["bbox_mask"])
        self._log_losses("train", out, batch[0].shape[0])
        self.log("train/class_error", self.train_class_error, on_step=False, on_epoch=True)
        self.log("train/bbox_mae", self.train_bbox_mae, on_step=False, on_epoch=True)
        return out["loss"]

    def _evaluation_step(self, stage: str, batch: tuple[Tensor, Tensor]) -> None:
        images, labels = batch
        out = self._shared_step(batch)
        self.val_class_error.update(out["cls_preds"], out["cls_targets"])
        self.val_bbox_mae.update(out["bbox_preds"], out["bbox_targets"], out["bbox_mask"])
        self._log_losses(stage, out, images.shape[0])
        # The progress bar shows the loss and the last val mAP: a class error of 0.005 looks perfect
        # while the model finds nothing (almost every anchor is background).
        self.log(f"{stage}/class_error", self.val_class_error, on_step=False, on_epoch=True)
        self.log(f"{stage}/bbox_mae", self.val_bbox_mae, on_step=False, on_epoch=True)

        detections = self._decode(out["anchors"], out["cls_preds"], out["bbox_preds"])
        self.evaluator.update(detections, labels, images.shape[-2:])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step("test", batch)

    def _evaluation_epoch_end(self, stage: str) -> None:
        self.last_evaluation, scalars, self.last_pr_curve = self.evaluator.compute(stage)
        for key, value in scalars.items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "map", sync_dist=False)
        if self.num_classes > 1:
            for name, value in self.last_evaluation["map_per_class"].items():
                if value is not None:
                    self.log(f"{stage}/map_class/{name}", value)

    def set_display_threshold(self, threshold: float) -> None:
        """Score from which a detection is shown, counted in precision/recall and the confusion matrix."""
        check_module_options(**{**dict(self.hparams), "display_threshold": threshold})
        self.hparams.display_threshold = threshold
        self.evaluator.display_threshold = threshold

    def on_validation_epoch_end(self) -> None:
        self._evaluation_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test")

    # ----------------------------------------------------------------- optimisation

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return build_optimization(
            self.hparams.optimizer or DEFAULT_OPTIMIZER, self.hparams.scheduler, trainable, self._trainer
        )
