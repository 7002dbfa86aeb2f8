"""bundle/determinism.py without training: the seed setting as the command line gives it, and the epoch seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from bundle.determinism import check_seed, epoch_seeds

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(("given", "expected"), [(3, 3), ("3", 3), (None, None), ("null", None), ("None", None)])
def test_the_seed_setting_reads_ints_and_null_as_given_on_the_command_line(given: object, expected: object) -> None:
    assert check_seed(given) == expected


@pytest.mark.parametrize("given", ["abc", "3.5", 3.5, -1, 2**32])
def test_a_seed_that_is_no_32_bit_integer_is_an_error_naming_the_setting(given: object) -> None:
    with pytest.raises(ValueError, match=r"random_seed must be an integer in \[0, 4294967296\) or null, got "):
        check_seed(given)


def test_random_seed_null_from_the_command_line_initializes_training(tmp_path: Path) -> None:
    """``--random_seed null`` arrives as the text 'null': it stopped MONAI's set_determinism with int('null')."""
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.yaml"), meta_file=str(CONFIGS / "metadata.json"),
                              workflow_type="train", run_id="training", bundle_root=str(tmp_path),
                              random_seed="null")  # fmt: skip
    workflow.initialize()  # runs the config's initialize: set_determinism
    assert workflow.parser.get_parsed_content("random_seed_value") is None


def test_every_epoch_and_rank_has_its_own_seeds() -> None:
    seeds = {(epoch, rank): epoch_seeds(7, epoch, rank, count=3) for epoch in range(1, 6) for rank in range(4)}
    assert len({s for three in seeds.values() for s in three}) == 5 * 4 * 3  # no two streams share a seed
    assert epoch_seeds(7, 2, 1, count=3) == seeds[(2, 1)]  # (seed, epoch, rank) alone: the same on every call
    assert epoch_seeds(0, 2)[0] != epoch_seeds(1, 1)[0]  # not seed + epoch
