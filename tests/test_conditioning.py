"""Class conditioning: label dropout, balanced labels, classifier-free guidance, and the bad inputs."""

import pytest
import torch

from ddpm_lottery.config import ModelConfig, SamplingConfig
from ddpm_lottery.data.images import ImageSet
from ddpm_lottery.models.conditioning import Guidance, adopt_classes, data_classes, drop_labels, guidance_for
from ddpm_lottery.models.families import denoise
from ddpm_lottery.models.networks import build_model
from ddpm_lottery.utils.errors import UserError

CLASSES = 4


def conditional_model(preset="tiny"):
    config = ModelConfig(preset=preset, class_conditional=True, num_classes=CLASSES)
    if preset == "tiny":
        # 16 channels in 8 norm groups: with one channel per group, GroupNorm would erase the added embedding
        config.block_out_channels = (16, 16, 16)
    else:
        config.num_layers, config.attention_head_dim = 2, 8
    model = build_model(config, 1, seed=0).eval()
    with torch.no_grad():
        # weights away from their initialisation (the adaLN-Zero DiT predicts zero there), so labels show
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    return model


def image_set(labels, classes=None):
    images = torch.zeros(len(labels) if labels is not None else 3, 1, 28, 28, dtype=torch.uint8)
    tensor = torch.tensor(labels) if labels is not None else None
    return ImageSet(images=images, labels=tensor, name="synthetic", source="test", flip=False, classes=classes)


@pytest.mark.parametrize("preset", ["tiny", "dit-small"])
def test_a_conditional_network_has_a_null_row_and_answers_to_its_labels(preset):
    model = conditional_model(preset)
    x, t = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 500])
    with torch.no_grad():
        first = denoise(model, x, t, torch.tensor([0, 0]))
        other = denoise(model, x, t, torch.tensor([1, 1]))
        null = denoise(model, x, t, torch.tensor([CLASSES, CLASSES]))  # the null row exists
        unlabelled = denoise(model, x, t)
    assert not torch.equal(first, other) and not torch.equal(first, null)
    assert torch.equal(unlabelled, null)  # tracing, FLOPs and timing calls get the unconditional prediction


def test_balanced_labels_depend_on_the_image_index_only():
    guidance = Guidance(CLASSES)
    labels = guidance.labels(0, 4 * CLASSES)
    assert torch.equal(labels.bincount(), torch.full((CLASSES,), 4))
    assert torch.equal(guidance.labels(5, 7), labels[5:12])  # drawn in parts, the same classes
    chosen = Guidance(CLASSES, classes=(3, 1)).labels(0, 5)
    assert chosen.tolist() == [3, 1, 3, 1, 3]


def test_label_dropout_draws_from_the_given_generator_at_its_rate():
    labels = torch.arange(4000) % CLASSES

    def drop(seed, rate=0.25):
        return drop_labels(labels, rate, CLASSES, torch.Generator().manual_seed(seed))

    a, b, c = drop(1), drop(1), drop(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    dropped = a == CLASSES
    assert 0.2 < float(dropped.float().mean()) < 0.3
    assert torch.equal(a[~dropped], labels[~dropped])  # the others keep their label
    assert torch.equal(drop(1, rate=0.0), labels)


def test_guidance_combines_the_conditional_and_unconditional_predictions():
    model = conditional_model()
    x, t = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([900, 500, 100])
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        conditional = denoise(model, x, t, labels)
        unconditional = denoise(model, x, t, torch.full((3,), CLASSES))
        guided = Guidance(CLASSES, scale=3.0).predict(model, x, t, labels)
        assert torch.equal(Guidance(CLASSES, scale=1.0).predict(model, x, t, labels), conditional)
        assert torch.equal(Guidance(CLASSES, scale=0.0).predict(model, x, t, labels), unconditional)
    expected = unconditional + 3.0 * (conditional - unconditional)
    assert not torch.equal(conditional, unconditional)
    assert torch.allclose(guided, expected, atol=1e-5) and not torch.allclose(guided, conditional, atol=1e-5)


def test_guidance_settings_are_checked_against_the_model():
    assert guidance_for(SamplingConfig(), None) is None  # an unconditional model samples as it always did
    assert guidance_for(SamplingConfig(), CLASSES) == Guidance(CLASSES, (), 1.0)
    with pytest.raises(UserError, match="--guidance-scale needs a class-conditional model"):
        guidance_for(SamplingConfig(guidance_scale=2.0), None)
    with pytest.raises(UserError, match="--classes needs a class-conditional model"):
        guidance_for(SamplingConfig(classes=(1,)), None)
    with pytest.raises(UserError, match=r"--classes 4,9 is outside the model's 4 classes \(0-3\)"):
        guidance_for(SamplingConfig(classes=(1, 4, 9)), CLASSES)


def test_a_conditional_run_takes_its_class_count_from_labelled_data_only():
    config = type("Config", (), {})()
    config.model = ModelConfig(class_conditional=True)
    adopt_classes(config, image_set([0, 2, 1]))
    assert config.model.num_classes == 3
    assert data_classes(image_set([0, 0, 1], classes=("a", "b", "c", "d"))) == 4  # a class folder may be unused
    with pytest.raises(UserError, match="needs class labels, and synthetic from test has none"):
        adopt_classes(config, image_set(None))
    with pytest.raises(UserError, match="labels up to 4, outside the 3 classes"):
        adopt_classes(config, image_set([0, 4]))
    with pytest.raises(UserError, match="at least two classes"):
        data_classes(image_set([0, 0]))
