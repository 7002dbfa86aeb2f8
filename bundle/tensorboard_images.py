"""A picture per validation in TensorBoard: one axial slice of FLAIR, reference and prediction side by side.

MONAI's ``TensorBoardImageHandler`` writes whole 3D volumes as animated frames of one channel; a reviewer of a
training run wants the tumour: the slice with the most reference tumour, the segmentation overlaid in colour.
"""

from __future__ import annotations

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter

__all__ = ["ValidationSliceImage", "overlay_slice"]

FLAIR_CHANNEL = 3  # channel order T1, T1ce, T2, FLAIR
OVERLAY_ALPHA = 0.5
#: colour of NCR/NET, ED and ET (the usual BraTS red, green, yellow)
CLASS_COLOURS = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, 0.0], [1.0, 1.0, 0.0]], dtype=np.float32)


def _classes_from_regions(regions: np.ndarray) -> np.ndarray:
    """(3, ...) masks ET, TC, WT -> class map 0 background, 1 NCR/NET, 2 ED, 3 ET."""
    et, tc, wt = regions > 0.5
    return np.select([et, tc, wt], [3, 1, 2], default=0).astype(np.uint8)


def overlay_slice(image: np.ndarray, regions: np.ndarray | None) -> np.ndarray:
    """RGB (3, H, W) of a grey slice in [0, 1] with the classes of (3, H, W) region masks overlaid."""
    brain = image != 0  # z-scored over brain voxels: zero outside the brain
    low, high = np.percentile(image[brain], [1, 99]) if brain.any() else (0.0, 1.0)
    grey = np.where(brain, np.clip((image - low) / max(high - low, 1e-6), 0, 1), 0).astype(np.float32)
    rgb = np.repeat(grey[None], 3, axis=0)
    if regions is not None:
        classes = _classes_from_regions(regions)
        for cls, colour in enumerate(CLASS_COLOURS, start=1):
            mask = classes == cls
            rgb[:, mask] = (1 - OVERLAY_ALPHA) * rgb[:, mask] + OVERLAY_ALPHA * colour[:, None]
    return rgb


class ValidationSliceImage:
    """Writes, after each validation, the first validation case's slice with the most reference tumour.

    Panels left to right: FLAIR, FLAIR with the reference, FLAIR with the prediction. Reads ``image``, ``label``
    and ``pred`` of the evaluator's decollated output, the last two as ET/TC/WT region masks.
    """

    def __init__(self, log_dir: str, tag: str = "validation/flair_reference_prediction") -> None:
        self.log_dir = log_dir
        self.tag = tag
        self._writer: SummaryWriter | None = None
        self._first: dict[str, np.ndarray] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._keep_first_case)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._first = None

    def _keep_first_case(self, engine: Engine) -> None:
        if self._first is None:
            item = engine.state.output[0]
            self._first = {k: torch.as_tensor(item[k]).detach().cpu().numpy() for k in ("image", "label", "pred")}

    def _write(self, engine: Engine) -> None:
        if self._first is None:
            return
        image, label, pred = self._first["image"][FLAIR_CHANNEL], self._first["label"], self._first["pred"]
        whole_tumour = label[-1] > 0.5
        z = int(np.argmax(whole_tumour.sum(axis=(0, 1)))) if whole_tumour.any() else image.shape[-1] // 2
        panels = [overlay_slice(image[..., z], None), overlay_slice(image[..., z], label[..., z]),
                  overlay_slice(image[..., z], pred[..., z])]  # fmt: skip
        # RAS arrays: rotate so that the axial slice shows anterior up
        picture = np.concatenate([np.rot90(p, axes=(1, 2)) for p in panels], axis=2)
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=self.log_dir)
        self._writer.add_image(self.tag, picture, global_step=engine.state.epoch, dataformats="CHW")
        self._writer.flush()
