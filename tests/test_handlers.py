"""RegionMetricsSaver on a tiny fake evaluation: metrics.csv, summary.json, box plots; where the spacing comes from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged, Orientationd

from bundle.handlers import DEFAULT_SPACING_MM, RegionMetricsSaver, summary_statistics
from bundle.labels import REGIONS
from bundle.metrics import METRIC_NAMES, region_metrics
from bundle.transforms import ClassesToRegionsd, LabelsToClassesd

SPACING = (2.0, 2.0, 3.0)
AFFINE = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
COLUMNS = ["case_id"] + [f"{region}_{name}" for region in REGIONS for name in METRIC_NAMES]


def regions(*boxes: tuple[slice, ...]) -> MetaTensor:
    """``(3, 12, 12, 12)`` region masks ET, TC, WT with one box each, on a 2 x 2 x 3 mm grid."""
    masks = torch.zeros(3, 12, 12, 12)
    for channel, index in enumerate(boxes):
        masks[(channel, *index)] = 1.0
    return MetaTensor(masks, affine=AFFINE)


CUBE = (slice(2, 6), slice(2, 6), slice(2, 6))
SHIFTED = (slice(3, 7), slice(2, 6), slice(2, 6))
CASES = {  # case id -> decollated evaluator output
    "case_a": {"pred": regions(CUBE, CUBE, CUBE), "label": regions(CUBE, CUBE, CUBE)},
    "case_b": {"pred": regions(SHIFTED, CUBE, SHIFTED), "label": regions(CUBE, SHIFTED, CUBE)},
    "case_c": {"pred": regions((slice(0, 0),) * 3, CUBE, CUBE), "label": regions(CUBE, CUBE, SHIFTED)},
}


def evaluate(saver: RegionMetricsSaver, cases: dict[str, dict]) -> None:
    """Runs a fake evaluator, one case per iteration: batch and output decollated as the SupervisedEvaluator's."""
    engine = Engine(lambda engine, batch: [cases[data["case_id"]] for data in batch])
    saver.attach(engine)
    engine.run([[{"case_id": case}] for case in cases], max_epochs=1)


def test_saver_writes_metrics_summary_and_boxplots(tmp_path: Path) -> None:
    evaluate(RegionMetricsSaver(output_dir=str(tmp_path / "eval")), CASES)
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert [row["case_id"] for row in rows] == list(CASES)
    for row, case in zip(rows, CASES.values()):
        expected = region_metrics(case["pred"], case["label"], spacing=SPACING)
        assert {k: float(v) for k, v in row.items() if k != "case_id"} == pytest.approx(
            {f"{r}_{m}": expected[r][m] for r in REGIONS for m in METRIC_NAMES}, abs=1e-6
        )
    assert float(rows[0]["WT_volume_ref_mm3"]) == 64 * 12.0  # 4^3 voxels of 2 x 2 x 3 mm: the spacing was used
    assert float(rows[2]["ET_hd95"]) == 373.13  # empty prediction

    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert list(summary) == ["ET", "TC", "WT"]
    for region in REGIONS:
        for name in METRIC_NAMES:
            values = [float(row[f"{region}_{name}"]) for row in rows]
            assert summary[region][name] == pytest.approx(np.mean(values), abs=1e-6)
            assert summary[region][f"{name}_median"] == pytest.approx(np.median(values), abs=1e-6)
            assert {f"{name}_std", f"{name}_q25", f"{name}_q75"} <= set(summary[region])
    for name in METRIC_NAMES:
        assert (tmp_path / "eval" / f"boxplot_{name}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not list((tmp_path / "eval").glob(".*.tmp"))  # atomic writes leave no temporary file


def test_summary_statistics_by_hand() -> None:
    # 1..4: mean 2.5; population std sqrt(1.25); linear quartiles at indices 0.75 and 2.25: 1.75 and 3.25
    assert summary_statistics("dice", [4.0, 1.0, 3.0, 2.0]) == pytest.approx(
        {"dice": 2.5, "dice_median": 2.5, "dice_std": 1.25**0.5, "dice_q25": 1.75, "dice_q75": 3.25}
    )


@pytest.fixture()
def oblique_label_file(tmp_path: Path) -> Path:
    """A BraTS 2021 label file whose array axes are (S, L, A) with voxel sizes 3, 1, 2 mm: RAS order is 1, 2, 3."""
    affine = np.array([[0.0, -1.0, 0.0, 10.0], [0.0, 0.0, 2.0, -5.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    labels = np.zeros((6, 8, 7), dtype=np.uint8)
    labels[1:4, 2:5, 2:4] = 4
    labels[2, 3, 2] = 1
    path = tmp_path / "case_seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path


def test_spacing_from_label_metadata_after_reorientation(oblique_label_file: Path) -> None:
    preprocess = Compose([
        LoadImaged(keys="label", ensure_channel_first=True, image_only=True),
        Orientationd(keys="label", axcodes="RAS", labels=None),
        LabelsToClassesd(keys="label", label_convention="brats2021"),
        ClassesToRegionsd(keys="label"),
    ])  # fmt: skip
    label = preprocess({"label": str(oblique_label_file)})["label"]
    assert isinstance(label, MetaTensor) and label.shape == (3, 8, 7, 6)  # ClassesToRegionsd keeps the metadata
    # the metadata wins over a configured spacing
    assert RegionMetricsSaver(output_dir="unused", spacing=(5.0, 5.0, 5.0)).case_spacing(label) == (1.0, 2.0, 3.0)


def test_spacing_of_labels_without_metadata(caplog: pytest.LogCaptureFixture) -> None:
    label = torch.zeros(3, 8, 7, 6)  # a plain tensor, as after EnsureTyped(track_meta=False)
    assert RegionMetricsSaver(output_dir="unused", spacing=[4.0, 4.0, 2.0]).case_spacing(label) == (4.0, 4.0, 2.0)
    assert not caplog.records
    saver = RegionMetricsSaver(output_dir="unused")
    assert saver.case_spacing(label) == saver.case_spacing(label) == DEFAULT_SPACING_MM == (1.0, 1.0, 1.0)
    assert len(caplog.records) == 1 and "no metadata and no spacing is configured" in caplog.text  # warned once


def test_bad_spacing_is_named() -> None:
    with pytest.raises(ValueError, match=r"spacing \[1.0, 0.0, 1.0\] must be 3 positive"):
        RegionMetricsSaver(output_dir="unused", spacing=[1.0, 0.0, 1.0])
