"""scripts/benchmark_robustness.py end to end on tiny settings, and its argument checks (no Dice is asserted:
thresholds belong to the benchmark's own table, docs/robustness.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY_MODEL, cli_overrides
from scripts import benchmark_robustness

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark_robustness.py"
TINY_DATA = ["--num-cases", "5", "--num-test-cases", "1", "--num-shifted-cases", "1", "--spacing", "4"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "CI": "true"}, timeout=900)  # fmt: skip


def test_trains_both_sets_on_the_same_data_and_appends_the_table(tmp_path: Path) -> None:
    output = tmp_path / "robustness.md"
    earlier = "# Robustness to domain shift\n\n## an earlier run\n\n| kept | as it was |\n"
    output.write_text(earlier)
    train_args = " ".join(cli_overrides({**TINY_MODEL, "max_epochs": 1, "val_interval": 1, "batch_size": 1}))
    result = run(*TINY_DATA, "--work-dir", str(tmp_path / "work"), "--output", str(output), "--train-args", train_args)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    text = output.read_text()
    assert text.startswith(earlier)
    assert "| augmentation | training (s) | held-out ET |" in text and "| shifted mean |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| paper |", "| robust |"))]
    assert len(rows) == 2 and all(len(row.split("|")) == 12 for row in rows), rows
    assert "The robust set " in text and "the paper's on the shifted set" in text
    for augmentation in ("paper", "robust"):  # each scored by the bundle's own evaluating workflow, on both sets
        for eval_dir in ("eval", "eval_shifted"):
            assert (tmp_path / "work" / augmentation / eval_dir / "summary.json").is_file()
    assert sorted(p.name for p in (tmp_path / "work" / "shifted").iterdir()) == ["SHIFTED_00000"]


@pytest.mark.parametrize(("args", "message"), [
    (["--augmentations", "paper,bogus"], "unknown set(s) ['bogus']; choose from paper, robust"),
    (["--num-shifted-cases", "0"], "--num-shifted-cases must be at least 1, got 0"),
    (["--num-cases", "3"], "--num-cases must be at least 5"),
    (["--train-args", "--augmentation paper"], "must not set --augmentation"),
])  # fmt: skip
def test_bad_arguments_are_named_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        benchmark_robustness.main(["--work-dir", str(tmp_path / "work"), "--output", str(tmp_path / "out.md"), *args])
    assert caught.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_work_dir_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mine.txt").write_text("a user's file")
    with pytest.raises(SystemExit, match="was not made by benchmark_robustness"):
        benchmark_robustness.main([*TINY_DATA, "--work-dir", str(tmp_path / "work"), "--output", str(tmp_path / "o")])
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["mine.txt"] and not (tmp_path / "o").exists()
