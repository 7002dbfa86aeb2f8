"""Ignite handlers of the bundle: per-case BraTS region metrics written by the ``evaluating`` workflow."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from bundle.labels import REGIONS
from bundle.metrics import region_metrics

__all__ = ["RegionMetricsSaver", "write_atomically"]


def write_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path`` and renames it, so no half-written file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RegionMetricsSaver:
    """Scores every evaluated case per BraTS region and writes ``metrics.csv`` and ``summary.json``.

    Reads ``pred`` and ``label`` from the decollated ``engine.state.output`` as ``(3, *spatial)`` region masks
    (ET, TC, WT; see :class:`bundle.transforms.ClassesToRegionsd`) and the case id from the batch's
    ``case_key``. ``metrics.csv`` has a row per case, ``summary.json`` the mean of each metric per region.
    """

    def __init__(self, output_dir: str, case_key: str = "case_id", name: str = "RegionMetricsSaver") -> None:
        self.output_dir = Path(output_dir)
        self.case_key = case_key
        self.logger = logging.getLogger(name)
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._score)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _score(self, engine: Engine) -> None:
        outputs, batch = engine.state.output, engine.state.batch
        for item, data in zip(outputs, batch):  # both decollated: one dict per case
            metrics = region_metrics(item["pred"], item["label"])
            row: dict[str, Any] = {"case_id": data[self.case_key]}
            row.update({f"{region}_{name}": value for region in REGIONS for name, value in metrics[region].items()})
            self.rows.append(row)
            self.logger.info(", ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()))

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean of each metric per region over the scored cases."""
        metric_names = {key.split("_", 1)[1] for key in self.rows[0] if key != "case_id"}
        return {
            region: {name: float(np.mean([row[f"{region}_{name}"] for row in self.rows])) for name in sorted(metric_names)}
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
        means = ", ".join(f"{region} {values['dice']:.4f}" for region, values in summary.items())
        self.logger.info(f"mean Dice over {len(self.rows)} cases: {means}; written to {self.output_dir}")
