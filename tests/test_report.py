"""Tests of scripts/report.py and bundle/report.py on tiny demo data, fake predictions and a fake TensorBoard log."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import yaml

from bundle import report
from bundle.demo_data import make_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "report.py"
CASES = ["DEMO_00000", "DEMO_00001", "DEMO_00002"]


def bundle_tags() -> tuple[list[str], list[str]]:
    """The scalar tags the bundle writes to TensorBoard, read from its sources (importing bundle.trainer is slow):
    the keys returned by ``bundle.trainer.gan_losses`` and the validation metric names of configs/train.yaml."""
    tree = ast.parse((ROOT / "bundle" / "trainer.py").read_text())
    (func,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "gan_losses"]
    (keys,) = [n for n in ast.walk(func) if isinstance(n, ast.Tuple) and n.elts
               and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in n.elts)]  # fmt: skip
    train = yaml.safe_load((ROOT / "configs" / "train.yaml").read_text())
    validate = train["validate"]
    return [k.value for k in keys.elts], [*validate["key_metric"], *validate["additional_metrics"]]


def test_report_knows_the_tags_the_bundle_writes() -> None:
    losses, metrics = bundle_tags()
    assert set(losses) == {*report.GENERATOR_TAGS, *report.DISCRIMINATOR_TAGS}
    assert set(metrics) == set(report.VALIDATION_TAGS)


def run_report(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "CI": "true", **(env or {})})  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_log(log_dir: Path, iterations: int = 60, epochs: int = 3) -> None:
    """A TensorBoard log like the bundle's: one event file of per-iteration losses, one of per-epoch metrics."""
    from torch.utils.tensorboard import SummaryWriter  # slow import: only where needed

    losses, metrics = bundle_tags()
    rng = np.random.default_rng(0)
    with SummaryWriter(str(log_dir)) as writer:
        for step in range(1, iterations + 1):
            for tag in losses:
                writer.add_scalar(tag, 1.0 / step + 0.1 * rng.random(), step)
    with SummaryWriter(str(log_dir)) as writer:
        for epoch in range(1, epochs + 1):
            for n, tag in enumerate(metrics):
                writer.add_scalar(tag, 0.2 * epoch + 0.05 * n, epoch)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three demo cases at 4 mm; predictions for two (one exact, one with ET called NCR); a log; a metrics CSV."""
    base = tmp_path_factory.mktemp("report")
    data, pred, logs = base / "data", base / "pred", base / "logs"
    make_dataset(data, num_cases=len(CASES), seed=3, spacing=4.0, quiet=True)
    pred.mkdir()
    shutil.copy(data / CASES[0] / f"{CASES[0]}_seg.nii.gz", pred / f"{CASES[0]}.nii.gz")
    seg = nib.load(data / CASES[1] / f"{CASES[1]}_seg.nii.gz")
    labels = np.asarray(seg.dataobj).copy()
    labels[labels == 4] = 1
    nib.save(nib.Nifti1Image(labels, seg.affine, seg.header), pred / f"{CASES[1]}.nii.gz")
    write_log(logs)
    metrics = base / "metrics.csv"
    metrics.write_text(f"case_id,ET_dice,TC_dice,WT_dice\n{CASES[0]},0.812345,0.9,0.95\n")
    return {"data": data, "pred": pred, "logs": logs, "metrics": metrics, "base": base}


def test_report_renders_cases_curves_and_html(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_report("--dataset-dir", str(inputs["data"]), "--predictions-dir", str(inputs["pred"]),
                        "--output-dir", str(out), "--logs-dir", str(inputs["logs"]),
                        "--metrics-csv", str(inputs["metrics"]))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(out / "index.html") in result.stdout
    assert sorted(p.name for p in (out / "cases").iterdir()) == [f"{c}.png" for c in CASES[:2]]  # no prediction: none
    for case in CASES[:2]:
        image = mpimg.imread(out / "cases" / f"{case}.png")
        height, width = image.shape[:2]
        assert 800 <= width <= 2000 and 1000 <= height <= 2500, image.shape  # 4 rows x 3 views
        assert image[..., :3].std() > 0.1  # a picture, not a blank page
        rows = panel_rows(image)
        assert len(rows) == 4  # FLAIR + reference, FLAIR + prediction, T1ce + reference, T1ce + prediction
        ncr, ed, et = ([colour_pixels(row, c) for row in rows] for c in report.CLASS_COLOURS)
        assert min(ed) > 20 and et[0] > 5 and et[2] > 5  # oedema everywhere; ET in the reference rows
        if case == CASES[0]:  # prediction = reference: the same colours in its rows
            assert et[1] == pytest.approx(et[0], rel=0.2) and ncr[1] == pytest.approx(ncr[0], rel=0.2, abs=3)
        else:  # prediction = reference with ET called NCR: no yellow, more red in the prediction rows
            assert et[1] <= 2 and et[3] <= 2 and ncr[1] > ncr[0] and ncr[3] > ncr[2]
    curves = mpimg.imread(out / "training_curves.png")
    assert curves.shape[1] >= 1000 and curves.shape[0] >= 300
    page = (out / "index.html").read_text()
    for ref in [f'src="cases/{c}.png"' for c in CASES[:2]] + ['src="training_curves.png"']:
        assert ref in page
    assert CASES[2] not in page
    assert "0.812" in page and "&ndash;" in page  # Dice of the case in metrics.csv; a dash for the other
    assert "<title>" in page and str(__import__("datetime").date.today().year) in page
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary folder left
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def colour_pixels(image: np.ndarray, colour: str, tolerance: float = 0.08) -> int:
    """How many pixels look like ``colour`` blended at the overlay alpha over some grey (what is left after
    removing the colour is grey: r = g = b)."""
    from matplotlib.colors import to_rgb

    rgb, alpha = np.array(to_rgb(colour)), report.OVERLAY_ALPHA
    grey = (image[..., :3] - alpha * rgb) / (1 - alpha)
    spread = grey.max(axis=-1) - grey.min(axis=-1)
    return int(((spread < tolerance) & (grey.min(axis=-1) > 0.05)).sum())


def panel_rows(image: np.ndarray) -> list[np.ndarray]:
    """The rows of panels of a case figure: runs of pixel rows that are not all black, taller than a tenth of the
    figure (titles, direction letters and the legend are lines of text; between the rows lies black)."""
    busy = (image[..., :3].max(axis=-1) > 0.05).any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], busy.astype(int), [0]])))
    return [image[a:b] for a, b in zip(edges[::2], edges[1::2]) if b - a > 0.1 * image.shape[0]]


def test_case_without_reference_is_rendered_with_the_prediction_only(inputs: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "unlabelled"
    (data / CASES[0]).mkdir(parents=True)
    for f in (inputs["data"] / CASES[0]).iterdir():
        if not f.name.endswith("_seg.nii.gz"):
            (data / CASES[0] / f.name).symlink_to(f)
    result = run_report("--dataset-dir", str(data), "--predictions-dir", str(inputs["pred"]),
                        "--output-dir", str(tmp_path / "out"), "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # --quiet
    assert f"{CASES[1]}" in result.stderr and "match no case" in result.stderr  # the extra prediction is named
    image = mpimg.imread(tmp_path / "out" / "cases" / f"{CASES[0]}.png")
    assert 500 <= image.shape[0] < 1000  # 2 rows: FLAIR and T1ce with the prediction
    assert not (tmp_path / "out" / "training_curves.png").exists()


def test_cases_option_selects_cases(inputs: dict[str, Path], tmp_path: Path) -> None:
    result = run_report("--dataset-dir", str(inputs["data"]), "--predictions-dir", str(inputs["pred"]),
                        "--output-dir", str(tmp_path / "out"), "--cases", CASES[1])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (tmp_path / "out" / "cases").iterdir()] == [f"{CASES[1]}.png"]
    unknown = run_report("--dataset-dir", str(inputs["data"]), "--predictions-dir", str(inputs["pred"]),
                         "--output-dir", str(tmp_path / "out2"), "--cases", f"{CASES[0]},NOPE")  # fmt: skip
    assert_one_line_error(unknown, "NOPE")
    unpredicted = run_report("--dataset-dir", str(inputs["data"]), "--predictions-dir", str(inputs["pred"]),
                             "--output-dir", str(tmp_path / "out2"), "--cases", CASES[2])  # fmt: skip
    assert_one_line_error(unpredicted, f"{CASES[2]}.nii.gz")
    assert not (tmp_path / "out2").exists()


def test_no_predictions_is_an_error(inputs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_report("--dataset-dir", str(inputs["data"]), "--predictions-dir", str(tmp_path / "empty"),
                        "--output-dir", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(result, "no predictions", str(tmp_path / "empty"))
    missing = run_report("--dataset-dir", str(tmp_path / "nope"), "--predictions-dir", str(inputs["pred"]),
                         "--output-dir", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(missing, str(tmp_path / "nope"))
    assert not (tmp_path / "out").exists()


def test_prediction_of_another_shape_is_named(inputs: dict[str, Path], tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(inputs["pred"] / f"{CASES[0]}.nii.gz", pred)
    bad = pred / f"{CASES[1]}.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), bad)
    result = run_report("--dataset-dir", str(inputs["data"]), "--predictions-dir", str(pred),
                        "--output-dir", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(result, str(bad), "(10, 10, 10)")
    assert not (tmp_path / "out").exists()


def test_label_outside_the_convention_is_named_and_leaves_nothing(inputs: dict[str, Path], tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    seg = nib.load(inputs["pred"] / f"{CASES[0]}.nii.gz")
    labels = np.asarray(seg.dataobj).copy()
    labels[labels == 4] = 3  # BraTS 2023 ET in a BraTS 2021 data set
    nib.save(nib.Nifti1Image(labels, seg.affine, seg.header), pred / f"{CASES[0]}.nii.gz")
    result = run_report("--dataset-dir", str(inputs["data"]), "--predictions-dir", str(pred),
                        "--output-dir", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(result, str(pred / f"{CASES[0]}.nii.gz"), "[3]", "brats2021")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]  # the temporary folder was removed


def test_existing_output_is_kept_without_overwrite(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["--dataset-dir", str(inputs["data"]), "--predictions-dir", str(inputs["pred"]), "--output-dir", str(out),
            "--cases", CASES[0]]  # fmt: skip
    assert_one_line_error(run_report(*args), str(out), "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    result = run_report(*args, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cases", "index.html"]  # replaced as a whole
    inside = run_report("--dataset-dir", str(inputs["data"]), "--predictions-dir", str(inputs["pred"]),
                        "--output-dir", str(inputs["pred"].parent), "--overwrite")  # fmt: skip
    assert_one_line_error(inside, "contains the input")
    assert (inputs["pred"] / f"{CASES[0]}.nii.gz").exists()


def test_display_slices_follow_the_radiological_convention(tmp_path: Path) -> None:
    """A marker at the patient's right, anterior, superior corner of an LPS-stored, anisotropic volume appears at
    the top left of the axial and coronal views (right on the left) and of the sagittal view (anterior left)."""
    shape, spacing = (20, 24, 10), (1.0, 1.5, 3.0)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # stored L, P, S: i grows toward the left
    volume = np.zeros(shape, np.float32)
    volume[1, 1, -2] = 1  # small i: right; small j: anterior; large k: superior
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "v.nii.gz")
    ras, zooms = report.load_canonical(str(tmp_path / "v.nii.gz"))
    assert zooms == spacing
    centre = tuple(int(c) for c in np.argwhere(ras)[0])
    views = report.display_slices(ras, centre, zooms)
    for view, (image, _aspect) in views.items():
        row, col = np.argwhere(image)[0]
        assert row < image.shape[0] / 4 and col < image.shape[1] / 4, (view, row, col, image.shape)
    assert views["axial"][1] == pytest.approx(1.5) and views["sagittal"][1] == pytest.approx(2.0)
    assert views["axial"][0].shape == (24, 20) and views["coronal"][0].shape == (10, 20)


def test_labels_to_classes_uses_the_convention() -> None:
    labels = np.array([0, 1, 2, 4], np.uint8)
    assert report.labels_to_classes(labels, "brats2021", "f").tolist() == [0, 1, 2, 3]
    assert report.labels_to_classes(np.array([0, 1, 2, 3]), "msd", "f").tolist() == [0, 2, 1, 3]
    with pytest.raises(ValueError, match=r"p\.nii\.gz: label values \[3\]"):
        report.labels_to_classes(np.array([0, 3]), "brats2021", "p.nii.gz")


def test_read_scalars_continues_resumed_runs_and_drops_replaced_ones(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    def write(steps: range, value: float, walltime: float) -> None:
        with SummaryWriter(str(tmp_path)) as writer:
            for n, step in enumerate(steps):
                writer.add_scalar("d_loss", value, step, walltime=walltime + n)

    write(range(1, 6), 1.0, 1000)  # first run
    write(range(6, 9), 2.0, 2000)  # resumed: continues
    assert report.read_scalars(tmp_path)["d_loss"][0].tolist() == list(range(1, 9))
    write(range(1, 3), 3.0, 3000)  # a new run into the same folder: replaces the earlier curve
    steps, values = report.read_scalars(tmp_path)["d_loss"]
    assert steps.tolist() == [1, 2] and values.tolist() == [3.0, 3.0]


def test_slices_go_through_the_largest_lesion_not_between_lesions() -> None:
    mask = np.zeros((40, 20, 20), np.uint8)
    mask[2:6, 8:12, 8:12] = 2  # small lesion
    mask[26:36, 5:15, 5:15] = 2  # large lesion; the overall centre of mass (x about 28.7) is near it, not in it
    mask[30, 10, 10] = 0  # its own centre is a hole: the nearest voxel of the lesion is taken
    centre = report.slice_centre(None, mask, np.ones_like(mask))
    assert mask[centre] and 26 <= centre[0] < 36
    assert report.slice_centre(mask, np.zeros_like(mask), mask) == centre  # the reference wins when given


def test_msd_cases_take_flair_and_t1ce_from_their_channels(tmp_path: Path) -> None:
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / "msd" / folder).mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 4), np.float32), np.eye(4)), tmp_path / "msd/imagesTr/BRATS_001.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "msd/labelsTr/BRATS_001.nii.gz")
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "pred/BRATS_001.nii.gz")
    convention, (case,), unmatched = report.select_cases(tmp_path / "msd", tmp_path / "pred")
    assert convention == "msd" and unmatched == []
    assert case.flair[1] == 0 and case.t1ce[1] == 2  # MSD channels: FLAIR, T1w, T1gd, T2w
    assert case.label == str(tmp_path / "msd/labelsTr/BRATS_001.nii.gz")
    report.check_inputs(case)


def test_logs_without_the_bundle_scalars_are_refused(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "logs")) as writer:
        writer.add_scalar("accuracy", 0.5, 1)
    with pytest.raises(ValueError, match=r"none of the bundle's scalars .*found \['accuracy'\]"):
        report.training_scalars(tmp_path / "logs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        report.training_scalars(tmp_path / "empty")


def test_quality_maps_and_worst_first_ranking(inputs: dict[str, Path], tmp_path: Path) -> None:
    """The quality check's maps beside a prediction are two more rows; its ranking a worst-first table."""
    pred = tmp_path / "pred"
    shutil.copytree(inputs["pred"], pred)
    seg = nib.load(pred / f"{CASES[0]}.nii.gz")
    tumour = (np.asarray(seg.dataobj) > 0).astype(np.float32)
    for name, values in (("quality", tumour), ("uncertainty", 0.2 * tumour)):
        nib.save(nib.Nifti1Image(values, seg.affine), pred / f"{CASES[0]}_{name}.nii.gz")
    (pred / "quality_ranking.csv").write_text(
        f"rank,case_id,d_score,est_dice_mean\n1,{CASES[1]},0.2,0.412345\n2,{CASES[0]},0.3,0.9\n3,DEMO_09999,0.4,0.95\n"
    )
    out = tmp_path / "report"
    result = run_report("--dataset-dir", str(inputs["data"]), "--predictions-dir", str(pred), "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr  # the maps are not taken for predictions of unknown cases
    assert sorted(p.name for p in (out / "cases").iterdir()) == [f"{c}.png" for c in CASES[:2]]
    with_maps, without = (panel_rows(mpimg.imread(out / "cases" / f"{c}.png")) for c in CASES[:2])
    assert len(with_maps) == 6 and len(without) == 4  # FLAIR + each map below the four segmentation rows
    assert with_maps[4][..., :3].std() > 0.05 and with_maps[5][..., :3].std() > 0.05
    page = (out / "index.html").read_text()
    table = page[page.index("worst first") :]
    assert "0.412" in table and table.index(CASES[1]) < table.index(CASES[0])  # worst first
    assert "DEMO_09999" not in page  # a ranked case that is not rendered is left out
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), seg.affine), pred / f"{CASES[0]}_quality.nii.gz")
    result = run_report("--dataset-dir", str(inputs["data"]), "--predictions-dir", str(pred), "--output-dir",
                        str(tmp_path / "other"))  # fmt: skip
    assert_one_line_error(result, f"{CASES[0]}_quality.nii.gz: shape (3, 3, 3) differs")
