"""The validation picture written to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bundle.tensorboard_images import CLASS_COLOURS, ValidationSliceImage, overlay_slice


def regions_of(classes: np.ndarray) -> np.ndarray:
    """Class map -> (3, ...) masks ET, TC, WT."""
    return np.stack([classes == 3, np.isin(classes, (1, 3)), classes > 0]).astype(np.float32)


def test_overlay_colours_each_class_and_keeps_background_black() -> None:
    image = np.ones((8, 8), np.float32)
    image[0] = 0  # outside the brain
    classes = np.zeros((8, 8), np.uint8)
    classes[2, 2], classes[3, 3], classes[4, 4] = 1, 2, 3
    rgb = overlay_slice(image, regions_of(classes))
    assert rgb.shape == (3, 8, 8)
    np.testing.assert_allclose(rgb[:, 0, 0], 0)  # black background
    for cls, (i, j) in enumerate([(2, 2), (3, 3), (4, 4)], start=1):
        np.testing.assert_allclose(rgb[:, i, j], 0.5 * rgb[:, 5, 5] + 0.5 * CLASS_COLOURS[cls - 1], atol=1e-6)


def test_writes_the_slice_with_most_tumour_each_validation(tmp_path: Path) -> None:
    image = torch.rand(4, 16, 16, 8) + 1
    classes = np.zeros((16, 16, 8), np.uint8)
    classes[4:12, 4:12, 5] = 2  # the slice with most tumour is z = 5
    classes[6:8, 6:8, 5] = 3
    output = {"image": image, "label": torch.as_tensor(regions_of(classes)), "pred": torch.zeros(3, 16, 16, 8)}
    evaluator = Engine(lambda engine, batch: [output])
    ValidationSliceImage(log_dir=str(tmp_path)).attach(evaluator)
    evaluator.run([0], max_epochs=2)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    pictures = accumulator.Images("validation/flair_reference_prediction")
    assert [p.step for p in pictures] == [1, 2]
    assert (pictures[0].width, pictures[0].height) == (3 * 16, 16)  # three panels side by side
