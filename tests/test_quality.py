"""The quality check's parts (bundle/quality.py) on tiny volumes; the bundle runs are in tests/test_bundle.py."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.inferers import SimpleInferer

from bundle.critic import region_masks
from bundle.inference import EnsembleInferer, entropy
from bundle.networks import Vox2VoxDiscriminator
from bundle.quality import (
    CONFUSION_FRACTIONS,
    CONFUSIONS,
    QualityScorer,
    SplitUncertaintyd,
    apply_calibration,
    corruptions,
    expected_dice,
    fit_calibration,
    load_calibration,
    load_discriminator,
    rank_worst_first,
    region_dice,
    save_calibration,
    top_fraction_recall,
    weights_digests,
)

SHAPE = (40, 40, 40)


def benchmark_quality_script() -> ModuleType:
    """scripts/benchmark_quality.py as a module (scripts/ is not a package)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    return importlib.import_module("benchmark_quality")


def _tumour() -> tuple[np.ndarray, np.ndarray]:
    """A spherical tumour (oedema around a necrotic core and an enhancing rim) inside a spherical brain."""
    grid = np.indices(SHAPE) - np.array([20, 20, 20])[:, None, None, None]
    r = np.sqrt((grid**2).sum(axis=0))
    brain = r < 19
    classes = np.zeros(SHAPE, dtype=np.int64)
    centre = np.sqrt(((np.indices(SHAPE) - np.array([14, 20, 20])[:, None, None, None]) ** 2).sum(axis=0))
    classes[centre < 9] = 2
    classes[centre < 6] = 3
    classes[centre < 3] = 1
    return classes, brain


def test_corruptions_lower_dice_monotonically_with_strength() -> None:
    ref, brain = _tumour()
    found = corruptions(ref, brain, rng=0)
    kinds = ("erosion", "dilation", "shift", "swap", "missing", "extra", "confusion")
    assert {(c.kind, c.level) for c in found} == {(k, lv) for k in kinds for lv in (1, 2, 3)}
    dice = {(c.kind, c.level): region_dice(c.classes, ref) for c in found}
    for kind in ("erosion", "dilation", "shift", "missing", "extra"):
        wt = [dice[(kind, level)]["dice_WT"] for level in (1, 2, 3)]
        assert wt[0] < 1.0, kind
        assert wt[0] > wt[1] > wt[2], (kind, wt)
    # erosion removes tumour only, dilation adds oedema only, inside the brain
    erosion = next(c.classes for c in found if c.kind == "erosion" and c.level == 1)
    dilation = next(c.classes for c in found if c.kind == "dilation" and c.level == 1)
    assert np.all(erosion[erosion > 0] == ref[erosion > 0]) and (erosion > 0).sum() < (ref > 0).sum()
    assert set(np.unique(dilation[(dilation > 0) & (ref == 0)]).tolist()) == {2} and not np.any(dilation[~brain])
    assert dice[("missing", 3)]["dice_WT"] == 0.0  # the whole tumour missed
    # swapped sub-regions keep the whole tumour and spoil the sub-regions
    for level in (1, 2, 3):
        assert dice[("swap", level)]["dice_WT"] == 1.0
        assert dice[("swap", level)]["dice_ET"] < 0.5
    assert dice[("swap", 3)]["dice_mean"] < dice[("swap", 1)]["dice_mean"]
    # deterministic for a seed
    again = corruptions(ref, brain, rng=0)
    assert all(np.array_equal(a.classes, b.classes) for a, b in zip(found, again))


def test_a_confusion_relabels_a_share_of_one_sub_region_as_another() -> None:
    ref, brain = _tumour()
    for seed in range(4):
        for c in corruptions(ref, brain, rng=seed, kinds=["confusion"]):
            changed = c.classes != ref
            (source,), (target,) = np.unique(ref[changed]), np.unique(c.classes[changed])
            assert (int(source), int(target)) in CONFUSIONS
            assert np.array_equal(c.classes > 0, ref > 0)  # the whole tumour kept
            # the part beyond a plane: the level's share of the sub-region, and at most one slice of it more
            coords = np.nonzero(ref == source)
            share = changed.sum() / len(coords[0])
            one_slice = max(np.bincount(axis).max() for axis in coords) / len(coords[0])
            assert CONFUSION_FRACTIONS[c.level] <= share <= CONFUSION_FRACTIONS[c.level] + one_slice, (c.level, share)
            assert region_dice(c.classes, ref)["dice_mean"] < 1.0


def test_corruptions_reject_bad_input() -> None:
    ref, brain = _tumour()
    with pytest.raises(ValueError, match="no tumour"):
        corruptions(np.zeros(SHAPE, dtype=np.int64), brain)
    with pytest.raises(ValueError, match="class indices"):
        corruptions(ref * 2, brain)
    with pytest.raises(ValueError, match="unknown corruption kinds"):
        corruptions(ref, brain, kinds=["blur"])


def test_the_models_expected_dice_is_the_true_dice_when_it_is_sure() -> None:
    """Probabilities that are the reference's one-hot map expect each corruption's true Dice, region by region;
    softer ones expect less of the reference itself; no tumour where the model is sure of none scores 1."""
    ref, brain = _tumour()
    sure = torch.nn.functional.one_hot(torch.as_tensor(ref), 4).movedim(-1, 0)[None].float()
    for corrupted in corruptions(ref, brain, rng=0, levels=[2]):
        expected = expected_dice(region_masks(torch.as_tensor(corrupted.classes)[None]), sure)[0].numpy()
        true = [region_dice(corrupted.classes, ref)[f"dice_{r}"] for r in ("ET", "TC", "WT")]
        np.testing.assert_allclose(expected, true, atol=1e-6)
    tumour = torch.as_tensor(ref > 0)
    softer = expected_dice(region_masks(torch.as_tensor(ref)[None]), torch.where(tumour, 0.8 * sure + 0.05, sure))[0]
    assert torch.all(softer < 0.98) and torch.all(softer > 0.8)  # doubt inside the tumour
    nothing = torch.zeros(1, 4, *SHAPE)
    nothing[:, 0] = 1.0
    assert expected_dice(torch.zeros(1, 3, *SHAPE), nothing).tolist() == [[1.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="region masks"):
        expected_dice(torch.zeros(1, 4, *SHAPE), nothing)
    with pytest.raises(ValueError, match="probabilities on the regions' grid"):
        expected_dice(torch.zeros(1, 3, *SHAPE), nothing[:, :, :20])


def test_discriminator_map_is_on_the_image_grid() -> None:
    torch.manual_seed(0)
    scorer = QualityScorer(Vox2VoxDiscriminator(in_channels=8, channels=4), spacing=(2.0, 2.0, 2.0))
    image = torch.randn(4, 36, 44, 40)
    classes = torch.zeros(36, 44, 40, dtype=torch.long)
    classes[10:20, 10:20, 10:20] = 2
    probs = torch.softmax(torch.randn(4, 36, 44, 40), dim=0)
    scores, maps = scorer.score(image, classes, probs, torch.rand(1, 36, 44, 40))
    implausibility = maps["implausibility"]
    assert set(maps) == {"implausibility"}  # no critic: no error map
    assert implausibility.shape == (1, 36, 44, 40)
    d = scorer.plausibility(image, torch.nn.functional.one_hot(classes, 4).permute(3, 0, 1, 2).float())
    assert d.shape == (1, 36, 44, 40)
    torch.testing.assert_close(implausibility, 1.0 - d)
    assert scores["d_score"] == pytest.approx(float(d.mean()), abs=1e-5)  # every voxel of this image is brain
    assert scores["d_score_low"] <= scores["d_score"]
    assert scores["volume_ml"] == pytest.approx(1000 * 8 / 1000)  # 1000 voxels of 8 mm^3
    assert 0.0 <= scores["confidence"] <= 1.0 and scores["uncertainty"] >= 0.0
    expected = expected_dice(region_masks(classes[None]), probs[None])[0]  # ET and TC empty, WT the block
    assert scores["expected_dice_wt"] == pytest.approx(float(expected[2])) and expected[2] < 0.5  # random probs
    assert scores["expected_dice"] == pytest.approx(float(expected.mean()))
    assert math.isnan(scores["est_dice_WT"]) and math.isnan(scores["est_dice_mean"])  # no calibration
    nothing, _ = scorer.score(image, classes)
    assert all(math.isnan(nothing[k]) for k in ("confidence", "expected_dice", "expected_dice_wt"))


class _FixedField(nn.Module):
    """A network whose class logits are a fixed field whatever its input: flipped passes disagree exactly where
    the field is not symmetric under the flip."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits, dim=1).expand(x.shape[0], -1, -1, -1, -1)


def test_uncertainty_is_the_passes_mutual_information() -> None:
    logits = torch.zeros(1, 4, 4, 2, 2)
    logits[0, 1, 0] = 3.0  # class 1 in the first slice along axis 0 only: a flip of axis 0 moves it to the last
    logits[0, 2, :, 0] = 1.0  # symmetric along axis 0
    net = _FixedField(logits)
    inferer = EnsembleInferer(SimpleInferer(), networks=[net], flip_axes=[0], uncertainty=True)
    out = inferer(torch.zeros(1, 4, 4, 2, 2), net)
    assert out.shape == (1, 5, 4, 2, 2)
    mean, mi = out[:, :4], out[:, 4:]
    passes = [torch.softmax(logits, 1), torch.flip(torch.softmax(logits, 1), [2])]  # the flipped pass, flipped back

    # by hand: entropy of the mean minus the mean of the entropies, in nats
    def h(p: torch.Tensor) -> torch.Tensor:
        return -(p * torch.log(p)).sum(dim=1, keepdim=True)

    expected = h((passes[0] + passes[1]) / 2) - (h(passes[0]) + h(passes[1])) / 2
    torch.testing.assert_close(mean, (passes[0] + passes[1]) / 2)
    torch.testing.assert_close(mi, expected.clamp_min(0))
    assert torch.all(mi[0, 0, 1:3] < 1e-6)  # the middle slices: both passes agree
    assert torch.all(mi[0, 0, [0, 3]] > 0.1)  # the end slices: they disagree
    # the default output is unchanged: the mean probabilities alone
    plain = EnsembleInferer(SimpleInferer(), networks=[net], flip_axes=[0])(torch.zeros(1, 4, 4, 2, 2), net)
    torch.testing.assert_close(plain, mean)
    torch.testing.assert_close(entropy(torch.tensor([[0.5, 0.5, 0.0]])), torch.tensor([[math.log(2)]]))
    with pytest.raises(ValueError, match="uncertainty channel"):
        SplitUncertaintyd(keys="pred")({"pred": mean[0]})
    split = SplitUncertaintyd(keys="pred")({"pred": out[0]})
    torch.testing.assert_close(split["uncertainty"], mi[0])


def test_calibration_recovers_a_linear_relation_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    features = ["d_score", "d_score_low", "d_score_tumour", "uncertainty"]
    sigmoid = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    for _ in range(30):
        a, b, u = rng.uniform(0, 1), rng.uniform(-1, 0), rng.uniform(0, 0.1)
        # Dice values inside [DICE_CLIP, 1 - DICE_CLIP], whose logits are linear in the scores
        rows.append({"d_score": a, "d_score_low": b, "uncertainty": u, "d_score_tumour": rng.uniform(0, 1),
                     "dice_WT": sigmoid(0.2 + 1.5 * a - 0.8 * b),
                     "dice_mean": sigmoid(0.1 + 1.4 * a - 9.0 * u)})  # fmt: skip
    calibration = fit_calibration(rows, features)
    wt = calibration["targets"]["dice_WT"]
    assert calibration["link"] == "logit"
    assert wt["intercept"] == pytest.approx(0.2, abs=1e-9)
    assert wt["coefficients"] == pytest.approx({"d_score": 1.5, "d_score_low": -0.8, "d_score_tumour": 0.0,
                                                "uncertainty": 0.0}, abs=1e-9)  # fmt: skip
    assert wt["r2"] == pytest.approx(1.0) and wt["spearman"] == pytest.approx(1.0)
    assert calibration["targets"]["dice_mean"]["coefficients"]["uncertainty"] == pytest.approx(-9.0, abs=1e-9)
    assert calibration["num_rows"] == 30
    assert calibration["features"] == features
    path = save_calibration(tmp_path / "models" / "quality_calibration.json", calibration)
    loaded = load_calibration(path)
    assert loaded == json.loads(json.dumps(calibration))
    scores = {"d_score": 0.5, "d_score_low": -0.5, "d_score_tumour": 0.7, "uncertainty": 0.05}
    assert apply_calibration(loaded, scores) == pytest.approx(
        {"est_dice_WT": sigmoid(0.2 + 0.75 + 0.4), "est_dice_mean": sigmoid(0.1 + 0.7 - 0.45)}
    )
    # far outside the fitted range the estimate stays in (0, 1) and keeps the order of the scores
    high, higher = ({"d_score": s, "d_score_low": 0.0, "d_score_tumour": 0.0, "uncertainty": 0.0} for s in (9.0, 12.0))
    estimates = [apply_calibration(loaded, s)["est_dice_WT"] for s in (high, higher)]
    assert 0.999 < estimates[0] < estimates[1] <= 1.0
    assert apply_calibration(loaded, {**high, "d_score": -1e4})["est_dice_WT"] == 0.0  # no overflow
    # a version 1 calibration (fitted on the Dice itself) is still applied as it was fitted
    linear = {**loaded, "link": "identity"}
    assert apply_calibration(linear, high)["est_dice_WT"] == 1.0
    with pytest.raises(ValueError, match="too few"):
        fit_calibration(rows[:4], features)


def test_calibration_on_critic_scores_without_a_critic_says_what_to_run() -> None:
    rows = [{"uncertainty": 0.1 * n, "confidence": 0.5, "confidence_wt": 0.5, "expected_dice": 0.5,
             "expected_dice_wt": 0.5, "critic_dice_mean": math.nan, "critic_dice_WT": math.nan, "dice_WT": 0.5,
             "dice_mean": 0.5} for n in range(10)]  # fmt: skip
    with pytest.raises(ValueError, match=r"\['critic_dice_WT', 'critic_dice_mean'\] are NaN .*run `training_critic`"):
        fit_calibration(rows)  # the default features include the critic's


def test_calibration_file_errors_name_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "none.json"
    assert load_calibration(missing) is None
    assert str(missing) in caplog.text and "calibrating" in caplog.text
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_calibration(missing, required=True)
    broken = tmp_path / "broken.json"
    broken.write_text('{"features": ["d_score"]}')
    with pytest.raises(ValueError, match=f"quality calibration {broken} cannot be read"):
        load_calibration(broken)


def test_a_calibration_of_other_weights_is_not_applied(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    generator, discriminator = tmp_path / "model.pt", tmp_path / "discriminator.pt"
    generator.write_bytes(b"generator weights")
    discriminator.write_bytes(b"discriminator weights")
    weights = {"generator": generator, "discriminator": discriminator}
    rows = [{"d_score": x, "dice_WT": x, "dice_mean": x} for x in np.linspace(0, 1, 5)]
    calibration = {**fit_calibration(rows, ["d_score"]), "weights": weights_digests(weights)}
    assert calibration["weights"]["discriminator"] == hashlib.sha256(b"discriminator weights").hexdigest()
    path = save_calibration(tmp_path / "quality_calibration.json", calibration)
    assert load_calibration(path, weights=weights) is not None
    discriminator.write_bytes(b"retrained discriminator weights")  # a new training run replaced it
    assert load_calibration(path, weights=weights) is None
    assert f"{path} was fitted with other weights than {discriminator} (discriminator)" in caplog.text
    with pytest.raises(ValueError, match="run `calibrating` again with --overwrite_calibration true"):
        load_calibration(path, required=True, weights=weights)
    critic = tmp_path / "critic.pt"  # fitted with a critic that is gone since
    critic.write_bytes(b"critic weights")
    weights = {"generator": generator, "critic": critic}
    path = save_calibration(tmp_path / "with_critic.json", {**calibration, "weights": weights_digests(weights)})
    critic.unlink()
    with pytest.raises(FileNotFoundError, match=f"fitted with weights that no longer exist: {critic} \\(critic\\)"):
        load_calibration(path, required=True, weights=weights)


def test_a_single_model_calibration_is_not_applied_to_an_ensemble(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Inference passes its ``ckpt_paths``: one path is that file; a fold ensemble is other weights."""
    fold0, fold1 = tmp_path / "fold0.pt", tmp_path / "fold1.pt"
    fold0.write_bytes(b"fold 0 weights")
    fold1.write_bytes(b"fold 1 weights")
    rows = [{"d_score": x, "dice_WT": x, "dice_mean": x} for x in np.linspace(0, 1, 5)]
    calibration = {**fit_calibration(rows, ["d_score"]), "weights": weights_digests({"generator": fold0})}
    path = save_calibration(tmp_path / "quality_calibration.json", calibration)
    assert load_calibration(path, weights={"generator": [fold0]}) is not None
    assert load_calibration(path, weights={"generator": [fold0, fold1]}) is None
    assert f"other weights than {fold0}, {fold1} (generator)" in caplog.text
    both = weights_digests({"generator": [fold0, fold1]})["generator"]
    assert both == weights_digests({"generator": [fold1, fold0]})["generator"]  # an average: order does not count


def test_missing_discriminator_checkpoint_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "models" / "discriminator.pt"
    with pytest.raises(FileNotFoundError, match=f"discriminator checkpoint {path} does not exist"):
        load_discriminator(lambda: Vox2VoxDiscriminator(in_channels=8, channels=4), path)
    torch.save(Vox2VoxDiscriminator(in_channels=8, channels=4).state_dict(), path.parent.mkdir() or path)
    loaded = load_discriminator(lambda: Vox2VoxDiscriminator(in_channels=8, channels=4), path)
    assert not loaded.training
    with pytest.raises(RuntimeError, match=f"checkpoint {path} does not fit"):
        load_discriminator(Vox2VoxDiscriminator(in_channels=8, channels=8), path)


def test_rankings() -> None:
    rows = [{"case_id": "a", "d_score": 0.5, "est_dice_mean": 0.9}, {"case_id": "b", "d_score": 0.9,
            "est_dice_mean": 0.2}, {"case_id": "c", "d_score": 0.1, "est_dice_mean": 0.5}]  # fmt: skip
    ranked, key = rank_worst_first(rows)
    assert key == "est_dice_mean" and [r["case_id"] for r in ranked] == ["b", "c", "a"]
    ranked, key = rank_worst_first([{**r, "est_dice_mean": math.nan} for r in rows])
    assert key == "d_score" and [r["case_id"] for r in ranked] == ["c", "a", "b"]
    critic = {"a": 0.3, "b": 0.6, "c": 0.9}  # uncalibrated, with a critic: the critic's own estimate
    ranked, key = rank_worst_first([{**r, "est_dice_mean": math.nan, "critic_dice_mean": critic[r["case_id"]]}
                                    for r in rows])  # fmt: skip
    assert key == "critic_dice_mean" and [r["case_id"] for r in ranked] == ["a", "b", "c"]
    expected = {"a": 0.8, "b": 0.4, "c": 0.6}  # uncalibrated, with the model's probabilities: its expected Dice
    ranked, key = rank_worst_first([{**r, "est_dice_mean": math.nan, "critic_dice_mean": critic[r["case_id"]],
                                     "expected_dice": expected[r["case_id"]]} for r in rows])  # fmt: skip
    assert key == "expected_dice" and [r["case_id"] for r in ranked] == ["b", "c", "a"]
    truth = list(range(20))
    assert top_fraction_recall(truth, truth) == 1.0
    assert top_fraction_recall(truth[::-1], truth) == 0.0
    assert top_fraction_recall([1, 0] + truth[2:], truth) == 1.0  # the worst two, in another order


def test_calibration_table_refuses_to_replace_a_calibration(tmp_path: Path) -> None:
    from bundle.quality import QualityCaseTable

    existing = tmp_path / "quality_calibration.json"
    existing.write_text("{}")
    scorer = QualityScorer(Vox2VoxDiscriminator(in_channels=8, channels=4))
    table = QualityCaseTable(scorer, tmp_path / "rows.csv", calibration_file=existing)
    with pytest.raises(FileExistsError, match=f"quality calibration {existing} exists"):
        table._start(None)  # type: ignore[arg-type]
    replace = QualityCaseTable(scorer, tmp_path / "rows.csv", calibration_file=existing, overwrite=True)
    with pytest.raises(FileNotFoundError, match=r"critic_dice_mean.*no critic \(models/critic.pt\): run `training_"):
        replace._start(None)  # type: ignore[arg-type]  # the default features include the critic's: refused at once
    QualityCaseTable(scorer, tmp_path / "rows.csv", calibration_file=existing, overwrite=True,
                     features=["uncertainty", "confidence"])._start(None)  # type: ignore[arg-type]  # fmt: skip
    assert existing.read_text() == "{}"
    with pytest.raises(ValueError, match="overwrite_calibration"):
        QualityCaseTable(scorer, tmp_path / "rows.csv", overwrite="false")  # type: ignore[arg-type]


def test_benchmark_summary_orients_and_compares_scores() -> None:
    summarise = benchmark_quality_script().summarise

    rng = np.random.default_rng(0)
    rows = []
    for n in range(40):
        dice = n / 40
        rows.append({"case_id": f"c{n // 4}", "source": "prediction" if n % 4 == 0 else "erosion", "dice_WT": dice,
                     "dice_mean": dice, "dice_ET": dice, "dice_TC": 1 - dice, "critic_dice_ET": dice + 1,
                     "critic_dice_TC": dice, "d_score": dice + 0.01 * rng.random(), "d_score_low": rng.random(),
                     "d_score_tumour": dice, "uncertainty": 1.0 - dice, "volume_ml": rng.random(),
                     "confidence": dice, "confidence_wt": dice, "d_score_probabilities": 0.5,
                     "expected_dice": 1 - dice, "expected_dice_wt": rng.random(),
                     "critic_dice_mean": dice**2, "critic_dice_WT": 1 - rng.random(),
                     "critic_auroc": 0.9 if n % 4 == 0 else 0.7, "d_auroc": math.nan,
                     "model_error_auroc": 0.6})  # fmt: skip
    calibration = fit_calibration(rows, ["d_score_tumour"])
    results = summarise(rows, calibration, calibration_rows=rows)
    scores = results["scores"]
    assert scores["est_dice_mean"]["all"]["spearman"] == pytest.approx(1.0)
    assert scores["uncertainty"]["all"]["spearman"] == pytest.approx(1.0)  # higher uncertainty: worse, oriented
    assert scores["uncertainty"]["all"]["worst10_recall"] == 1.0
    assert abs(scores["d_score_low"]["all"]["spearman"]) < 0.5
    assert scores["est_mean_confidence_only"]["predictions"]["spearman"] == pytest.approx(1.0)
    assert scores["est_WT_confidence_only"]["truth"] == "dice_WT"
    assert scores["est_WT_d_and_uncertainty"]["all"]["spearman"] > 0.9  # d_score tracks the Dice here
    assert scores["critic_dice_mean"]["predictions"]["spearman"] == pytest.approx(1.0)  # monotone: a rank measure
    assert abs(scores["critic_dice_WT"]["all"]["spearman"]) < 0.5  # noise here
    assert scores["critic_dice_ET"]["all"]["spearman"] == pytest.approx(1.0)  # each region against its own Dice
    assert scores["critic_dice_TC"]["all"]["spearman"] == pytest.approx(-1.0)
    assert scores["est_mean_with_critic"]["all"]["spearman"] > 0.9
    assert results["maps"]["critic_auroc"]["predictions"] == {"n": 10, "auroc": pytest.approx(0.9)}
    assert results["maps"]["critic_auroc"]["all"]["auroc"] == pytest.approx(0.75)
    assert results["maps"]["d_auroc"]["all"]["n"] == 0  # NaN (nothing wrong) is left out
    assert results["maps"]["model_error_auroc"]["all"] == {"n": 40, "auroc": pytest.approx(0.6)}
    assert scores["expected_dice"]["all"]["spearman"] == pytest.approx(-1.0)  # a baseline, reported as it ranks
    assert results["num_cases"] == 10 and results["num_rows"] == 40


def test_benchmark_arguments_are_checked_before_any_work(tmp_path: Path) -> None:
    main = benchmark_quality_script().main

    root = ["--bundle-root", str(tmp_path)]
    for argv, message in [
        (["--calibration-cases", "-1"], "--calibration-cases must be >= 0"),
        (["--seed", "1"], "choose another test seed"),
        (["--calibration-seed", "0"], "choose another calibration seed"),
        (["--seed", "7", "--calibration-seed", "7"], "seeds must differ"),
        (["--shifted-seed", "2"], "choose another shifted seed"),  # the demo's own shifted cases
        (["--shifted-seed", "100"], "seeds must differ"),  # the held-out cases' default seed
        (["--num-shifted-cases", "-1"], "--num-shifted-cases must be >= 0"),
        (["--critic-epochs", "0"], "--critic-epochs must be >= 1"),
        (["--critic", str(tmp_path / "critic.pt"), "--calibration-cases", "0"], "--critic needs --calibration-cases"),
        (["--critic", str(tmp_path / "other.pt")], r"critic .*other.pt not found: train it"),
        (["--critic", str(tmp_path / "other.pt"), "--critic-epochs", "5"], "with --critic no critic is trained"),
        (["--calibration-cases", "0", "--calibration-seed", "0"], "model.pt not found: train"),
    ]:
        with pytest.raises(SystemExit, match=message):  # the last: the calibration seed is not used with 0 cases
            main([*root, *argv])
    assert not any(tmp_path.iterdir())  # nothing written
