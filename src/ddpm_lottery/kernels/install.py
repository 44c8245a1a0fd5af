"""One call for every command: install the kernels a ``--kernels`` setting asks for, and say so."""

from __future__ import annotations

import time

import torch

from .layers import KernelReport, use_kernels


def install_kernels(model: torch.nn.Module, runtime, *, log=print, training: bool = False,
                    masks: dict[str, torch.Tensor] | None = None, what: str = "the network") -> KernelReport:
    """Apply ``runtime.kernels`` (and ``runtime.kernel_cache``) to ``model`` in place.

    ``training``: ``auto`` means dense, because a training run's kernel must not depend on a timing.
    Every fallback to dense that the user did not ask for is said in one line.
    """
    asked = runtime.kernels
    choice = "dense" if training and asked == "auto" else asked
    tuner = None
    if choice == "auto":
        from .tuning import KernelTuner

        tuner = KernelTuner(runtime.kernel_cache, log=log)
    started = time.perf_counter()
    report = use_kernels(model, choice, masks=masks, tuner=tuner, training=training)
    report.setup_seconds = time.perf_counter() - started
    report.tuner = tuner
    if tuner is not None and report.sparse_layers:
        _check_network_once(model, tuner, report)
    if choice == "dense":
        return report
    if report.unavailable:
        if asked == "sparse" or not report.unavailable.startswith("the sparse kernels run on the CPU only"):
            log(f"--kernels {asked}: {report.unavailable}; running PyTorch's dense kernels")
    elif not report.sparse_layers and not report.dense_layers:
        if asked == "sparse":
            log(f"--kernels sparse: {what} has no pruned weights; running PyTorch's dense kernels")
    elif report.dense_layers:
        log(f"--kernels {asked}: {len(report.dense_layers)} layer(s) run dense: "
            f"{'; '.join(f'{name} ({why})' for name, why in list(report.dense_layers.items())[:3])}")
    return report


def _check_network_once(model: torch.nn.Module, tuner, report: KernelReport) -> None:
    """After the first call at an input shape has chosen each layer's kernel, time the whole network once
    against the plain one; where the plain one wins, it is what runs at that shape (its own modules back)."""
    decided: dict[tuple, str] = {}

    def shapes_of(args) -> tuple:
        return tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))

    def before(module, args, kwargs):
        report.run_plain(decided.get(shapes_of(args)) == "dense")
        return None

    def after(module, args, kwargs, output):
        shapes = shapes_of(args)
        if shapes in decided or torch.is_grad_enabled():
            return None
        decided[shapes] = "auto"  # first: the check's own calls come back through these hooks
        decided[shapes] = tuner.verify_network(module, args, kwargs, report)
        report.run_plain(decided[shapes] == "dense")
        return None

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)


def kernel_record(model: torch.nn.Module, report: KernelReport) -> dict:
    """What a record says of the kernels after the network ran: the choice, what each layer ran, and the
    one-off seconds (the JIT and the timing of layers) that the command's wall time includes."""
    from .layers import kernels_used, sparse_layers

    used = kernels_used(model)
    pruned = len(sparse_layers(model))
    if not used.get("sparse"):
        text = "dense kernels" if report.choice == "dense" or not pruned else f"dense kernels (--kernels {report.choice})"
    else:
        text = f"sparse kernels in {used['sparse']} of {pruned} pruned layers (--kernels {report.choice})"
    tuning = report.tuner.tuning_seconds if report.tuner is not None else 0.0
    return {"kernels": text, "kernel_choice": report.choice, "kernel_layers": used,
            "kernel_setup_s": round(report.setup_seconds, 3), "kernel_tuning_s": round(tuning, 3)}


def sparse_kernels(module: torch.nn.Module, kernels: str = "auto", *, cache_dir: str | None = None,
                   log=print) -> KernelReport:
    """Run any network's pruned ``Conv2d``/``Linear`` layers with the sparse kernels, in place.

    For a model from outside a run, e.g. an exported ticket loaded in plain diffusers::

        pipeline = DDPMPipeline.from_pretrained("exported/ticket")
        ddpm_lottery.sparse_kernels(pipeline.unet)        # layers with zeros: the faster kernel, timed once
        images = pipeline(batch_size=4).images

    The layers' surviving weights are their nonzero ones; the state dict is unchanged.
    """
    from ..config import RuntimeConfig, check_config

    runtime = RuntimeConfig()
    runtime.kernels, runtime.kernel_cache = kernels, cache_dir
    check_config(runtime)
    return install_kernels(module, runtime, log=log, what="the network")
