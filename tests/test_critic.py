"""The quality critic (bundle/critic.py) on tiny volumes; its bundle run is in tests/test_bundle.py."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer
from scipy.special import logit

from bundle.critic import (
    CRITIC_SCORE_NAMES,
    CriticLoss,
    CriticTrainer,
    QualityCritic,
    _corrupted,
    check_critic_path,
    corruption_chances,
    critic_dice,
    criticise,
    error_map,
    load_critic,
    new_critic,
    patch_shares,
    region_masks,
    save_critic,
)
from bundle.networks import Vox2VoxDiscriminator, Vox2VoxGenerator
from bundle.quality import CORRUPTION_KINDS, QualityScored, QualityScorer, corruptions, region_dice

SIZE = 32
#: each class's mean intensity in T1, T1ce, T2 and FLAIR (z-scored): the image tells the classes apart
CLASS_INTENSITIES = np.array(
    [[0.0, 0.0, 0.0, 0.0], [-1.0, -0.5, 1.0, 0.5], [-0.5, 0.0, 1.5, 2.0], [0.5, 2.5, 0.5, 1.0]]
)


def synthetic_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 32^3 case: a brain (ball) with a tumour (oedema around a core with an enhancing rim) at a random place, and
    four modalities whose intensities follow the classes, with noise. Returns ``(image (4, ...), label (1, ...))``."""
    rng = np.random.default_rng(seed)
    grid = np.indices((SIZE,) * 3).transpose(1, 2, 3, 0)
    brain = np.linalg.norm(grid - SIZE / 2, axis=-1) <= 14
    centre = SIZE / 2 + rng.uniform(-4, 4, 3)
    dist = np.linalg.norm(grid - centre, axis=-1)
    radius = rng.uniform(5, 8)
    label = np.zeros((SIZE,) * 3, dtype=np.int64)
    label[dist <= radius] = 2
    label[dist <= 0.6 * radius] = 3
    label[dist <= 0.35 * radius] = 1
    label[~brain] = 0
    image = CLASS_INTENSITIES[label].transpose(3, 0, 1, 2) + 1.0 + 0.2 * rng.standard_normal((4,) + label.shape)
    image[:, ~brain] = 0.0
    return torch.as_tensor(image, dtype=torch.float32), torch.as_tensor(label[None])


def tiny_networks() -> tuple[Vox2VoxGenerator, Vox2VoxDiscriminator]:
    torch.manual_seed(0)
    return Vox2VoxGenerator(features=4), Vox2VoxDiscriminator(in_channels=8, channels=4)


def trainer(critic: QualityCritic, generator: torch.nn.Module, cases: list, epochs: int, lr: float = 1e-3):
    batches = [{"image": image[None], "label": label[None], "brain": (image != 0).any(0, keepdim=True)[None]}
               for image, label in cases]  # fmt: skip
    return CriticTrainer(
        device="cpu", max_epochs=epochs, train_data_loader=batches, network=critic,
        optimizer=torch.optim.Adam(critic.parameters(), lr=lr), generator=generator,
        generator_inferer=SimpleInferer(), loss_function=CriticLoss(), seed=0,
    )  # fmt: skip


def test_critic_keeps_the_discriminator_and_has_two_outputs_per_region() -> None:
    _, discriminator = tiny_networks()
    critic = QualityCritic(discriminator)
    body = {k: v for k, v in critic.body.state_dict().items() if not k.startswith("final_conv")}
    assert all(torch.equal(v, discriminator.state_dict()[k]) for k, v in body.items())  # the trained weights
    image, label = synthetic_case(0)
    onehot = torch.nn.functional.one_hot(label[0], 4).permute(3, 0, 1, 2).float()
    logits = critic(image[None], onehot[None])
    assert logits.shape == (1, 6, 4, 4, 4)  # p_fp and p_fn of ET, TC and WT, one per 8^3 voxels
    assert critic.body is not discriminator and critic.body.final_conv is not discriminator.final_conv
    with pytest.raises(TypeError, match="PatchDiscriminator"):
        QualityCritic(torch.nn.Conv3d(8, 1, 3))


def test_new_critic_starts_from_scratch_or_from_the_trained_discriminator(tmp_path: Path) -> None:
    """``training_critic``'s default is a fresh network of the discriminator's architecture; ``start_from`` loads the
    GAN's trained weights, and a missing file is named."""
    _, discriminator = tiny_networks()
    with torch.no_grad():
        discriminator.initial_conv.conv.weight.add_(1.0)  # "trained": unlike any fresh initialisation
    path = tmp_path / "discriminator.pt"
    torch.save(discriminator.state_dict(), path)
    architecture = lambda: Vox2VoxDiscriminator(in_channels=8, channels=4)  # noqa: E731

    def body(critic: QualityCritic) -> dict[str, torch.Tensor]:
        return {k: v for k, v in critic.body.state_dict().items() if not k.startswith("final_conv")}

    trained = {k: v for k, v in discriminator.state_dict().items() if not k.startswith("final_conv")}
    started = new_critic(architecture, "cpu", start_from=path)
    assert all(torch.equal(v, trained[k]) for k, v in body(started).items())
    fresh = new_critic(architecture, "cpu")
    assert body(fresh).keys() == trained.keys()
    assert not torch.equal(body(fresh)["initial_conv.conv.weight"], trained["initial_conv.conv.weight"])
    assert started(*(torch.zeros(1, 4, 16, 16, 16),) * 2).shape == fresh(*(torch.zeros(1, 4, 16, 16, 16),) * 2).shape
    with pytest.raises(FileNotFoundError, match="discriminator.pt"):
        new_critic(architecture, "cpu", start_from=tmp_path / "missing" / "discriminator.pt")


def test_exact_error_shares_give_the_true_dice() -> None:
    """Logits of each patch's true error shares give each region's true Dice: the patches partition the image."""
    image, label = synthetic_case(1)
    ref = label[0, :30, :29].numpy()  # not a whole number of patches: the last ones are partly padding
    brain = (image[:, :30, :29] != 0).any(0).numpy()
    for corrupted in corruptions(ref, brain, rng=0, levels=[2]):
        s, r = region_masks(torch.as_tensor(corrupted.classes)[None]), region_masks(torch.as_tensor(ref)[None])
        share = patch_shares(s)
        p_fp = torch.where(share > 0, patch_shares(s * (1 - r)) / share.clamp_min(1e-9), 0.0)
        p_fn = torch.where(share < 1, patch_shares((1 - s) * r) / (1 - share).clamp_min(1e-9), 0.0)
        logits = torch.as_tensor(logit(np.clip(torch.cat([p_fp, p_fn], 1).double().numpy(), 1e-6, 1 - 1e-6)))
        assert logits.shape[2:] == (4, 4, 4)  # ceil(30 / 8), ceil(29 / 8), ceil(32 / 8)
        estimated = critic_dice(logits, s)[0].numpy()
        expected = [region_dice(corrupted.classes, ref)[f"dice_{r}"] for r in ("ET", "TC", "WT")]
        np.testing.assert_allclose(estimated, expected, atol=1e-3)
        wrong = error_map(logits, s)
        assert wrong.shape == (1, 1, 30, 29, 32) and 0 <= wrong.min() and wrong.max() <= 1
        if (corrupted.classes != ref).any():  # higher where the segmentation is wrong than where it is right
            assert wrong[0, 0][torch.as_tensor(corrupted.classes != ref)].mean() > wrong[0, 0][
                torch.as_tensor(corrupted.classes == ref)].mean()  # fmt: skip


def test_each_patch_sees_the_voxels_it_is_about() -> None:
    """Patch i of the critic's grid is centred on voxels [8 i, 8 i + 8): the gradient of its logit with respect to
    the input (norms and dropout off: evaluation, no normalisation statistics) is centred there."""
    torch.manual_seed(0)
    discriminator = Vox2VoxDiscriminator(in_channels=8, channels=4, dropout=0.0)
    for module in discriminator.modules():  # instance norm would spread every patch's gradient over the image
        if isinstance(module, torch.nn.InstanceNorm3d):
            module.forward = lambda x: x  # type: ignore[method-assign]
    critic = QualityCritic(discriminator).eval()
    image = torch.zeros(1, 4, 96, 96, 96, requires_grad=True)
    logits = critic(image, torch.zeros(1, 4, 96, 96, 96))
    assert logits.shape[2:] == (12, 12, 12)
    for patch in (4, 6, 7):  # inside: a border patch's receptive field is cut by the image's edge
        (grad,) = torch.autograd.grad(logits[0, 0, patch, 6, 6], image, retain_graph=True)
        weight = grad.abs().sum(dim=(0, 1, 3, 4))  # along the first spatial axis
        centre = float((weight * torch.arange(96)).sum() / weight.sum())
        assert abs(centre - (8 * patch + 3.5)) < 1.0, (patch, centre)


def test_a_training_step_changes_the_critic_and_not_the_generator() -> None:
    generator, discriminator = tiny_networks()
    critic = QualityCritic(discriminator)
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    g_before = {k: v.clone() for k, v in generator.state_dict().items()}
    d_before = {k: v.clone() for k, v in discriminator.state_dict().items()}
    engine = trainer(critic, generator, [synthetic_case(2)], epochs=1)
    engine.run()
    assert {"loss", "map_loss", "dice_loss"} <= set(engine.state.output[0])
    changed = [k for k, v in critic.state_dict().items() if not torch.equal(v, before[k])]
    assert "body.final_conv.weight" in changed and any(k.startswith("body.initial_conv") for k in changed)
    assert all(torch.equal(v, g_before[k]) for k, v in generator.state_dict().items())
    assert all(torch.equal(v, d_before[k]) for k, v in discriminator.state_dict().items())  # D is copied
    assert not any(p.requires_grad for p in generator.parameters())


def test_after_a_short_training_a_reference_scores_higher_than_a_corrupted_copy() -> None:
    """Corruptions that grow the segmentation (a dilation, an extra lesion): an untrained critic, whose Dice follows
    the volume alone, scores them higher than the reference; trained briefly, it scores the reference higher, on
    cases it never saw."""
    generator, discriminator = tiny_networks()
    critic = QualityCritic(discriminator)
    seeds = (100, 101, 102, 103)
    unseen = [synthetic_case(seed) for seed in seeds]
    kinds = ["dilation", "extra"]

    def margins() -> list[float]:  # reference's critic Dice minus each heavily corrupted copy's
        scorer = QualityScorer(discriminator, critic=critic, spacing=(4.0, 4.0, 4.0))
        out = []
        for seed, (image, label) in zip(seeds, unseen):
            ref = label[0].numpy()
            reference, _ = scorer.score(image, ref)
            for bad in corruptions(ref, (image != 0).any(0).numpy(), rng=seed, kinds=kinds, levels=[3]):
                scores, maps = scorer.score(image, bad.classes)
                assert maps["quality"].shape == (1, SIZE, SIZE, SIZE)
                out.append(reference["critic_dice_mean"] - scores["critic_dice_mean"])
        return out

    assert all(m < 0 for m in margins()), margins()  # untrained: each scores above the reference
    trainer(critic, generator, [synthetic_case(seed) for seed in range(10, 16)], epochs=16, lr=3e-3).run()
    assert all(m > 0 for m in margins()), margins()


def test_the_flip_averaged_estimate_is_the_mean_over_every_flip() -> None:
    """No flips: the one pass of critic_dice and error_map. Over the 8 flips the mean is the same for a flipped
    copy of the case (the map flipped with it), which holds only if every flip is counted once and each map is
    flipped back; and it differs from the one pass (a patch grid that does not divide 30 voxels evenly)."""
    _, discriminator = tiny_networks()
    critic = QualityCritic(discriminator).eval()
    torch.nn.init.normal_(critic.body.final_conv.weight, std=0.05)  # outputs that depend on the input
    image, label = synthetic_case(4)
    image, classes = image[None, :, :30, :29], label[:, :30, :29]
    dice, wrong = criticise(critic, image, classes)
    onehot = torch.nn.functional.one_hot(classes, 4).permute(0, 4, 1, 2, 3).float()
    with torch.no_grad():
        logits = critic(image, onehot)
    torch.testing.assert_close(dice, critic_dice(logits, region_masks(classes)))
    torch.testing.assert_close(wrong, error_map(logits, region_masks(classes)))
    mean_dice, mean_wrong = criticise(critic, image, classes, flip_axes=[0, 1, 2])
    assert mean_dice.shape == (1, 3) and mean_wrong.shape == (1, 1, 30, 29, SIZE)
    assert not torch.allclose(mean_dice, dice, atol=1e-4)
    flipped_dice, flipped_wrong = criticise(critic, image.flip(2, 4), classes.flip(1, 3), flip_axes=[0, 1, 2])
    torch.testing.assert_close(flipped_dice, mean_dice)
    torch.testing.assert_close(flipped_wrong, mean_wrong.flip(2, 4))
    with pytest.raises(ValueError, match=r"flip_axes \(tta_flip_axes\) must be distinct axes in \[0, 3\), got \[0, 0"):
        QualityScorer(discriminator, critic=critic, critic_flip_axes=[0, 0])


def test_scores_reach_monai_label_and_a_missing_critic_leaves_them_empty() -> None:
    generator, discriminator = tiny_networks()
    image, label = synthetic_case(3)
    probs = torch.nn.functional.one_hot(label[0], 4).permute(3, 0, 1, 2).float() * 0.9 + 0.025
    for critic in (QualityCritic(discriminator), None):
        scorer = QualityScorer(discriminator, critic=critic)
        out = QualityScored(keys="pred", scorer=scorer)({"image": image, "pred": probs})
        result = out["result"]["quality"]  # MONAI Label returns data["result"] as the inference's params
        if critic is not None:
            assert out["quality"].shape == (1, SIZE, SIZE, SIZE)
            assert all(0.0 <= result[k] <= 1.0 for k in CRITIC_SCORE_NAMES)
        else:
            assert "quality" not in out and all(result[k] is None for k in CRITIC_SCORE_NAMES)
            assert all(math.isnan(out["quality_scores"][k]) for k in CRITIC_SCORE_NAMES)
        assert result["est_dice_mean"] is None  # no calibration: NaN becomes null, which JSON can carry


def test_critic_files_are_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, discriminator = tiny_networks()
    missing = tmp_path / "models" / "critic.pt"
    with caplog.at_level(logging.WARNING):
        assert load_critic(discriminator, missing) is None
    assert f"quality critic {missing} does not exist: run `training_critic`" in caplog.text
    with pytest.raises(FileNotFoundError, match="training_critic"):
        load_critic(discriminator, missing, required=True)
    check_critic_path(missing, overwrite=False)  # nothing there yet
    critic = QualityCritic(discriminator)
    save_critic(critic, missing)
    assert sorted(p.name for p in missing.parent.iterdir()) == ["critic.pt"]  # no temporary file left
    with pytest.raises(FileExistsError, match=f"quality critic {missing} exists: pass --overwrite_critic true"):
        check_critic_path(missing, overwrite=False)
    check_critic_path(missing, overwrite=True)
    with pytest.raises(ValueError, match="overwrite_critic must be true or false"):
        check_critic_path(missing, overwrite="yes")  # type: ignore[arg-type]
    loaded = load_critic(lambda: Vox2VoxDiscriminator(in_channels=8, channels=4), missing)
    assert all(torch.equal(v, critic.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(RuntimeError, match=f"checkpoint {missing} does not fit"):
        load_critic(Vox2VoxDiscriminator(in_channels=8, channels=8), missing)


def test_critic_loss_and_trainer_arguments_are_checked() -> None:
    generator, discriminator = tiny_networks()
    with pytest.raises(ValueError, match="dice_weight"):
        CriticLoss(dice_weight=-1)
    with pytest.raises(TypeError, match="QualityCritic"):
        trainer(discriminator, generator, [synthetic_case(0)], epochs=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="corruption_levels"):
        CriticTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=QualityCritic(discriminator),
                      optimizer=torch.optim.Adam(generator.parameters()), generator=generator,
                      generator_inferer=SimpleInferer(), loss_function=CriticLoss(), corruption_levels=[4])  # fmt: skip
    for weights, message in (
        ({"blur": 1}, r"unknown corruption kinds \['blur'\]"),
        ({"shift": -1}, ">= 0"),
        ({"shift": 0, "swap": 0}, "not all 0"),
        ({"shift": float("nan")}, "finite"),
    ):
        with pytest.raises(ValueError, match=message):
            CriticTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=QualityCritic(discriminator),
                          optimizer=torch.optim.Adam(generator.parameters()), generator=generator,
                          generator_inferer=SimpleInferer(), loss_function=CriticLoss(),
                          corruption_weights=weights)  # fmt: skip


def test_corruption_kinds_are_drawn_with_their_weights() -> None:
    kinds, chances = corruption_chances(None)
    assert kinds == list(CORRUPTION_KINDS) and np.allclose(chances, 1 / len(CORRUPTION_KINDS))
    kinds, chances = corruption_chances({"shift": 1, "confusion": 3})
    assert kinds == ["shift", "confusion"] and np.allclose(chances, [0.25, 0.75])
    # only confusions: the whole tumour is kept, sub-regions change
    classes = synthetic_case(0)[1][0].numpy()
    brain = np.ones(classes.shape, dtype=bool)
    kinds, chances = corruption_chances({"confusion": 1, "shift": 0})
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = _corrupted(classes, brain, rng, [1, 2, 3], kinds, chances)
        assert np.array_equal(out > 0, classes > 0) and not np.array_equal(out, classes)
