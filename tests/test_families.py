"""Network families (models/families): the registry, the U-Net and DiT families, and a user's own DiT."""

import json

import pytest
import torch
from diffusers import DiTTransformer2DModel, UNet2DModel

from ddpm_lottery.config import LotteryConfig, ModelConfig
from ddpm_lottery.config.identity import non_default
from ddpm_lottery.models.families import (
    DIT,
    PRESETS,
    UNET,
    denoise,
    family_of,
    family_of_config,
    family_of_preset,
)
from ddpm_lottery.models.networks import build_model, count_parameters, meta_network, network_kwargs
from ddpm_lottery.models.sources import network_source
from ddpm_lottery.pruning.modules import execution_order, module_map, prunable_names
from ddpm_lottery.utils.errors import UserError


def tiny_dit(seed=0, **overrides):
    """A 2-block DiT of D = 16 on 28x28 digits: trains and traces in milliseconds."""
    settings = dict(preset="dit-small", num_layers=2, num_attention_heads=2, attention_head_dim=8)
    return build_model(ModelConfig(**{**settings, **overrides}), 1, seed=seed)


def expected_prunable(kwargs):
    """Prunable weights of a DiT from its architecture: patch embedding, per block the timestep MLP (from the
    256 sinusoid features), adaLN (D -> 6D), q/k/v/out and the 4D-wide MLP, then the final adaLN and output."""
    d = kwargs["num_attention_heads"] * kwargs["attention_head_dim"]
    patch = kwargs["patch_size"] ** 2 * kwargs["in_channels"]
    block = 256 * d + d * d + 6 * d * d + 4 * d * d + 2 * 4 * d * d
    return patch * d + kwargs["num_layers"] * block + 2 * d * d + d * patch


@pytest.mark.parametrize("preset,channels", [("dit-small", 1), ("dit-medium", 1), ("dit-s2", 3)])
def test_dit_presets_prune_every_linear_and_the_patch_embedding(preset, channels):
    model = meta_network(ModelConfig(preset=preset), channels)  # dit-s2 is never built: counted on meta
    parameters = dict(model.named_parameters())
    counted = sum(parameters[n].numel() for n in prunable_names(model))
    assert counted == expected_prunable(network_kwargs(ModelConfig(preset=preset), channels))
    assert family_of(model) is DIT and family_of_preset(preset) is DIT


def test_the_registry_knows_every_preset_and_old_runs_are_unets():
    assert {family_of_preset(p) for p in PRESETS} == {UNET, DIT}
    assert family_of_config({"sample_size": 28}) is UNET  # network.json of runs made before families
    assert family_of_config({"_class_name": "DiTTransformer2DModel"}) is DIT
    with pytest.raises(UserError, match="not a network this tool prunes"):
        family_of_config({"_class_name": "UNet2DConditionModel"})


def test_a_dit_starts_as_adaln_zero_from_its_seed():
    model = tiny_dit(seed=3)
    zero = [n for n, p in model.named_parameters() if "norm1.linear" in n or n.startswith("proj_out")]
    assert zero and all(not model.get_parameter(n).any() for n in zero)
    others = [n for n in prunable_names(model) if n not in zero]
    assert all(model.get_parameter(n).abs().sum() > 0 for n in others)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 900])
    assert not denoise(model, x, t).any()  # every block the identity, the output zero
    again, other = tiny_dit(seed=3), tiny_dit(seed=4)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert same and not torch.equal(model.pos_embed.proj.weight, other.pos_embed.proj.weight)


def test_diffusers_label_dropout_never_draws_from_the_global_rng():
    model = tiny_dit().train()
    with torch.no_grad():  # give the label table a say in the output
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tables = [m.embedding_table for m in model.modules() if hasattr(m, "embedding_table")]
    assert tables and all(t.num_embeddings == 2 for t in tables)  # 1 class + the null class, still addressable
    x, t = torch.randn(64, 1, 28, 28), torch.full((64,), 500)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = denoise(model, x, t)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, denoise(model.eval(), x, t))  # train mode drops no label


def test_the_module_map_follows_the_forward_pass_block_by_block():
    model = tiny_dit()
    order = execution_order(model)
    assert order[0] == "pos_embed.proj" and order[-2:] == ["proj_out_1", "proj_out_2"]
    blocks = module_map(model)
    assert [m.name for m in blocks.modules] == ["pos_embed", "transformer_blocks.0", "transformer_blocks.1", "proj_out"]
    layers = module_map(model, "layer").tensor_names
    assert layers == [f"{name}.weight" for name in order] == blocks.tensor_names
    assert layers[1:9] == [
        f"transformer_blocks.0.{n}.weight"
        for n in (
            "norm1.emb.timestep_embedder.linear_1",
            "norm1.emb.timestep_embedder.linear_2",
            "norm1.linear",
            "attn1.to_q",
            "attn1.to_k",
            "attn1.to_v",
            "attn1.to_out.0",
            "ff.net.0.proj",
        )
    ]


def test_layer_groups_choose_what_a_dit_prunes():
    model = tiny_dit()
    assert {DIT.layer_group(n.rsplit(".weight", 1)[0]) for n in prunable_names(model)} == set(DIT.layer_groups)
    attention = prunable_names(model, groups=("attention",))
    assert attention and all(".attn1." in n for n in attention)
    both = prunable_names(model, groups=("mlp", "final"))
    assert set(both) == {n for n in prunable_names(model) if ".ff." in n or n.startswith("proj_out")}
    with pytest.raises(UserError, match="not a layer group"):
        prunable_names(model, groups=("heads",))
    with pytest.raises(UserError, match="has no layer groups"):
        prunable_names(build_model(ModelConfig(), 1), groups=("attention",))


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(preset="dit-small", block_out_channels=(8, 8, 8)), "sets a UNet2DModel"),
        (dict(preset="tiny", num_layers=2), "sets a DiTTransformer2DModel"),
        (dict(preset="dit-small", patch_size=5), "not divisible by the patch size"),
    ],
)
def test_an_override_of_another_family_or_a_bad_patch_is_one_line(settings, match):
    with pytest.raises(UserError, match=match):
        build_model(ModelConfig(**settings), 1)


def test_unet_runs_keep_their_identity_and_their_network():
    # new settings at their default leave a U-Net run's hash inputs as they were
    assert non_default(LotteryConfig()) == {}
    model = build_model(ModelConfig(preset="tiny"), 1)
    assert isinstance(model, UNet2DModel) and family_of(model) is UNET
    assert "_class_name" not in UNET.network_config(model)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    assert torch.equal(denoise(model, x, t), model(x, t).sample)


def _save_dit(folder, **config):
    model = DiTTransformer2DModel(
        sample_size=8, patch_size=4, in_channels=1, out_channels=1, num_layers=1, num_attention_heads=2,
        attention_head_dim=4, num_embeds_ada_norm=1, **config,
    )  # fmt: skip
    model.save_pretrained(folder)
    return model


def test_a_users_dit_folder_loads_with_its_weights(tmp_path):
    saved = _save_dit(tmp_path / "dit")
    model = build_model(ModelConfig(pretrained=str(tmp_path / "dit")), 1)
    assert family_of(model) is DIT
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), model.state_dict().values()))
    assert count_parameters(model) == count_parameters(saved)


def test_latent_models_are_refused_naming_what_is_missing(tmp_path):
    latent = tmp_path / "latent"
    DiTTransformer2DModel(
        sample_size=8, patch_size=4, in_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4
    ).save_pretrained(latent)
    with pytest.raises(UserError, match="latents.*VAE"):
        network_source(ModelConfig(pretrained=str(latent)))
    pipeline = tmp_path / "dit-pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DiTPipeline",
                "transformer": ["diffusers", "DiTTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            }
        )
    )
    with pytest.raises(UserError, match="VAE"):
        network_source(ModelConfig(pretrained=str(pipeline)))
    conditional = tmp_path / "sd-unet" / "config.json"
    conditional.parent.mkdir()
    conditional.write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4}))
    with pytest.raises(UserError, match="cross-attention"):
        network_source(ModelConfig(unet_config=str(conditional)))


def test_a_users_dit_config_is_bounded_as_strictly_as_the_flags(tmp_path):
    folder = tmp_path / "dit"
    _save_dit(folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_layers"] = 10_000
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="num_layers"):
        network_source(ModelConfig(pretrained=str(folder)))


def test_each_family_says_how_its_networks_take_classes():
    dit = DIT.build(DIT.with_classes(network_kwargs(ModelConfig(preset="dit-small", num_layers=1), 1), 10))
    assert DIT.num_classes(dit.config) == 10
    assert dit.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.num_embeddings == 11  # + null class
    unconditional = DIT.with_classes(network_kwargs(ModelConfig(preset="dit-small"), 1), 0)
    assert unconditional["num_embeds_ada_norm"] == 1
    unet = UNET.build(UNET.with_classes(network_kwargs(ModelConfig(preset="tiny"), 1), 10))
    assert UNET.num_classes(unet.config) == 10
    x, t, labels = torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([3, 7])
    assert denoise(unet, x, t, labels).shape == x.shape == denoise(dit, x, t, labels).shape
