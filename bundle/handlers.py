"""Ignite handlers of the bundle: per-case BraTS region metrics written by the ``evaluating`` workflow."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from monai.data import MetaTensor

from bundle.checkpoints import check_writable_folder
from bundle.labels import REGIONS
from bundle.metrics import METRIC_NAMES, region_metrics

__all__ = ["RegionMetricsSaver", "write_atomically", "summary_statistics"]

#: voxel size (mm) assumed for evaluated arrays without metadata when no ``spacing`` is configured: train.yaml's
#: default ``target_spacing``, to which ``load_transforms`` resamples every case (and BraTS' own grid)
DEFAULT_SPACING_MM: tuple[float, float, float] = (1.0, 1.0, 1.0)

#: unit of each metric of ``METRIC_NAMES`` that has one, for the box plots' axes
METRIC_UNITS: dict[str, str] = {"hd95": "mm", "lesion_hd95": "mm", "volume_ref_mm3": "mm³", "volume_pred_mm3": "mm³"}


def write_atomically(path: Path, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to a temporary file beside ``path`` and renames it: no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary_statistics(name: str, values: Sequence[float]) -> dict[str, float]:
    """Mean under ``name``, and ``name_median``, ``_std`` (population, ddof 0), ``_q25``, ``_q75`` (linear)."""
    values = np.asarray(values, dtype=float)
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {
        name: float(values.mean()),
        f"{name}_median": float(median),
        f"{name}_std": float(values.std()),
        f"{name}_q25": float(q25),
        f"{name}_q75": float(q75),
    }


def _boxplot_png(metric: str, values_by_region: Mapping[str, Sequence[float]]) -> bytes:
    """PNG of one metric's box plot, the regions side by side (matplotlib's Agg canvas, no pyplot state)."""
    figure = Figure(figsize=(4.0, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.boxplot(list(values_by_region.values()), tick_labels=list(values_by_region))
    axes.set_title(f"{metric} per case ({len(next(iter(values_by_region.values())))} cases)")
    axes.set_ylabel(f"{metric} ({METRIC_UNITS[metric]})" if metric in METRIC_UNITS else metric)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


class RegionMetricsSaver:
    """Scores every evaluated case per BraTS region and writes ``metrics.csv``, ``summary.json`` and box plots.

    Reads ``pred`` and ``label`` from the decollated ``engine.state.output`` as ``(3, *spatial)`` region masks
    (ET, TC, WT; see :class:`bundle.transforms.ClassesToRegionsd`) and the case id from the batch's ``case_key``.
    The voxel spacing comes from the label's MetaTensor affine. Where the preprocessing dropped the metadata (the
    bundle's ``validate#preprocessing`` ends with ``EnsureTyped(track_meta=False)``), it is ``spacing``, the voxel
    size of the evaluated arrays (``@target_spacing``, to which ``load_transforms`` resamples); left out, it is
    ``DEFAULT_SPACING_MM``, with a warning.

    Writes to ``output_dir``: ``metrics.csv`` (``case_id``, then ``<region>_<metric>`` for each metric of
    :data:`bundle.metrics.METRIC_NAMES`, then with ``scores_key`` the columns of that per-case dict of the output,
    e.g. the quality check's scores), ``summary.json`` (per region, :func:`summary_statistics` of each
    metric, so ``summary["WT"]["dice"]`` is the mean) and ``boxplot_<metric>.png`` per metric.
    """

    def __init__(
        self,
        output_dir: str,
        case_key: str = "case_id",
        spacing: Sequence[float] | None = None,
        name: str = "RegionMetricsSaver",
        scores_key: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.scores_key = scores_key  # e.g. "quality_scores": a dict per case whose values become extra columns
        self.case_key = case_key
        self.spacing = None if spacing is None else tuple(float(v) for v in spacing)
        if self.spacing is not None and (len(self.spacing) != 3 or not all(v > 0 for v in self.spacing)):
            raise ValueError(f"spacing {spacing!r} must be 3 positive voxel sizes in mm.")
        self.logger = logging.getLogger(name)
        self.rows: list[dict[str, Any]] = []
        self._warned = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._score)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []
        self._warned = False
        check_writable_folder(self.output_dir)  # before any case is scored, not after all of them

    def case_spacing(self, label: Any) -> tuple[float, ...]:
        """Voxel sizes (mm) of a decollated label: its MetaTensor affine, else ``spacing`` or the default."""
        if isinstance(label, MetaTensor):
            return tuple(float(v) for v in label.pixdim)
        if self.spacing is not None:
            return self.spacing
        if not self._warned:
            self.logger.warning(
                f"the evaluated labels carry no metadata and no spacing is configured: assuming {DEFAULT_SPACING_MM} "
                "mm voxels (set the handler's spacing to the preprocessing's target spacing)."
            )
            self._warned = True
        return DEFAULT_SPACING_MM

    def _score(self, engine: Engine) -> None:
        outputs, batch = engine.state.output, engine.state.batch
        for item, data in zip(outputs, batch):  # both decollated: one dict per case
            metrics = region_metrics(item["pred"], item["label"], spacing=self.case_spacing(item["label"]))
            row: dict[str, Any] = {"case_id": data[self.case_key]}
            row.update({f"{region}_{name}": metrics[region][name] for region in REGIONS for name in METRIC_NAMES})
            if self.scores_key is not None:  # the quality check's scores (bundle.quality.QualityScored), after Dice
                scores = item.get(self.scores_key)
                if not isinstance(scores, Mapping):
                    raise KeyError(f"case {row['case_id']}: no {self.scores_key!r} scores in the evaluator's output")
                row.update({k: v for k, v in scores.items() if k != "case_id"})
            self.rows.append(row)
            self.logger.info(
                ", ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items())
            )

    def summary(self) -> dict[str, dict[str, float]]:
        """Per region, the mean, median, standard deviation and quartiles of each metric over the scored cases."""
        return {
            region: {
                key: value
                for name in METRIC_NAMES
                for key, value in summary_statistics(name, [row[f"{region}_{name}"] for row in self.rows]).items()
            }
            for region in REGIONS
        }

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            raise RuntimeError("no case was evaluated: the evaluation data set is empty.")
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(self.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()} for row in self.rows)
        write_atomically(self.output_dir / "metrics.csv", table.getvalue())
        summary = self.summary()
        write_atomically(self.output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        for name in METRIC_NAMES:
            values = {region: [row[f"{region}_{name}"] for row in self.rows] for region in REGIONS}
            write_atomically(self.output_dir / f"boxplot_{name}.png", _boxplot_png(name, values))
        means = ", ".join(f"{region} {values['dice']:.4f}" for region, values in summary.items())
        self.logger.info(f"mean Dice over {len(self.rows)} cases: {means}; written to {self.output_dir}")
