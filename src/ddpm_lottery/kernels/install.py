"""One call for every command: install the kernels a ``--kernels`` setting asks for, and say so.

With ``--compile-sampling`` the denoiser's calls also go through ``torch.compile`` (inductor): the
group norms, activations, adds and copies between the convolutions fuse into a few loops, and the
sparse kernels sit inside the graph as the custom operators of :mod:`.ops`.  Each input shape's
first call runs eagerly, because that call builds the layers' index structures and (``auto``) times
their kernels, which is data-dependent Python that a graph cannot hold; the calls after it run
compiled."""

from __future__ import annotations

import time

import torch

from ddpm_lottery.config import RuntimeConfig, check_config
from ddpm_lottery.kernels.layers import KernelReport, kernels_used, sparse_layers, use_kernels
from ddpm_lottery.kernels.tuning import KernelTuner
from ddpm_lottery.utils.errors import require_type


def install_kernels(
    model: torch.nn.Module,
    runtime,
    *,
    log=print,
    training: bool = False,
    masks: dict[str, torch.Tensor] | None = None,
    what: str = "the network",
) -> KernelReport:
    """Apply ``runtime.kernels`` (and ``runtime.kernel_cache``) to ``model`` in place.

    ``training``: ``auto`` means dense, because a training run's kernel must not depend on a timing.
    Every fallback to dense that the user did not ask for is said in one line.
    """
    asked = runtime.kernels
    choice = "dense" if training and asked == "auto" else asked
    tuner = None
    if choice == "auto":
        tuner = KernelTuner(runtime.kernel_cache, log=log)
    started = time.perf_counter()
    report = use_kernels(model, choice, masks=masks, tuner=tuner, training=training)
    report.setup_seconds = time.perf_counter() - started
    report.tuner = tuner
    compiled = _compile_calls(model, report) if runtime.compile_sampling and not training else None
    if tuner is not None and report.sparse_layers:
        _check_network_once(model, tuner, report, compiled)
    if choice == "dense":
        return report
    if report.unavailable:
        if asked == "sparse" or not report.unavailable.startswith("the sparse kernels run on the CPU only"):
            log(f"--kernels {asked}: {report.unavailable}; running PyTorch's dense kernels")
    elif not report.sparse_layers and not report.dense_layers:
        if asked == "sparse":
            log(f"--kernels sparse: {what} has no pruned weights; running PyTorch's dense kernels")
    elif report.dense_layers:
        log(
            f"--kernels {asked}: {len(report.dense_layers)} layer(s) run dense: "
            f"{'; '.join(f'{name} ({why})' for name, why in list(report.dense_layers.items())[:3])}"
        )
    return report


def _shapes_of(args) -> tuple:
    return tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))


def _own_code(fn, name: str):
    """A function that calls ``fn`` through a code object of its own.  Dynamo keeps compiled graphs per code
    object and stops compiling one past ``recompile_limit`` (8) graphs, warning each time; every UNet2DModel
    shares ``forward``'s code, so a process compiling a few networks of other structures (a benchmark, the
    frontier's levels) would print a screenful of warnings and run its later networks eagerly."""

    def call(*args, **kwargs):
        return fn(*args, **kwargs)

    call.__code__ = call.__code__.replace(co_name=name)
    return call


class _CompiledCalls:
    """The network's forward: eager at each input shape's first call (and whenever autograd records),
    ``torch.compile``d after it.  ``dynamic=False``: a sampler meets one or two batch sizes, and a graph
    specialised to each keeps the custom operators' shapes plain integers."""

    def __init__(self, eager, report: KernelReport):
        self.eager, self.report = eager, report
        self.graph = torch.compile(_own_code(eager, f"compiled_forward_{id(self)}"), dynamic=False)
        self.seen: set[tuple] = set()
        self.timed: set[tuple] = set()

    def __call__(self, *args, **kwargs):
        shapes = _shapes_of(args)
        # the graph runs no Python: check here that each layer's structure still holds its nonzero weights
        # (a load or a ``.data`` write since the last call); a rebuilt one is traced again from an eager call
        if any([layer.check_weights() for *_, layer in self.report.swaps if layer.choice != "dense"]):
            self.seen.clear()
            self.timed.clear()
        if torch.is_grad_enabled() or shapes not in self.seen:
            self.seen.add(shapes)
            return self.eager(*args, **kwargs)
        return self.run_graph(*args, **kwargs)

    def run_graph(self, *args, **kwargs):
        key = (_shapes_of(args), self.report.plain)
        if key in self.timed:
            return self.graph(*args, **kwargs)
        started = time.perf_counter()  # this shape's first compiled call: it pays the compile
        output = self.graph(*args, **kwargs)
        self.report.compile_seconds += time.perf_counter() - started
        self.timed.add(key)
        return output


def _compile_calls(model: torch.nn.Module, report: KernelReport) -> _CompiledCalls:
    # an instance attribute: ``model(x)`` still runs its hooks (eagerly), then this forward
    calls = _CompiledCalls(model.forward, report)
    model.forward = calls
    report.compiled = True
    return calls


def _check_network_once(
    model: torch.nn.Module, tuner, report: KernelReport, compiled: _CompiledCalls | None = None
) -> None:
    """After the first call at an input shape has chosen each layer's kernel, time the whole network once
    against the plain one; where the plain one wins, it is what runs at that shape (its own modules back).
    With ``compiled``, both are timed compiled, since that is how the later calls run."""
    decided: dict[tuple, str] = {}

    def before(module, args, kwargs):
        report.run_plain(decided.get(_shapes_of(args)) == "dense")
        return None

    def after(module, args, kwargs, output):
        shapes = _shapes_of(args)
        if shapes in decided or torch.is_grad_enabled():
            return None
        decided[shapes] = "auto"  # first: the check's own calls come back through these hooks
        decided[shapes] = tuner.verify_network(
            module, args, kwargs, report, call=compiled.run_graph if compiled else None, compiled=compiled is not None
        )
        report.run_plain(decided[shapes] == "dense")
        return None

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)


def kernel_record(model: torch.nn.Module, report: KernelReport) -> dict:
    """What a record says of the kernels after the network ran: the choice, what each layer ran, and the
    one-off seconds (the JIT and the timing of layers) that the command's wall time includes."""
    used = kernels_used(model)
    pruned = len(sparse_layers(model))
    if not used.get("sparse"):
        text = (
            "dense kernels" if report.choice == "dense" or not pruned else f"dense kernels (--kernels {report.choice})"
        )
    else:
        text = f"sparse kernels in {used['sparse']} of {pruned} pruned layers (--kernels {report.choice})"
    tuning = report.tuner.tuning_seconds if report.tuner is not None else 0.0
    if report.compiled:
        text += ", through torch.compile"
    return {
        "kernels": text,
        "kernel_choice": report.choice,
        "kernel_layers": used,
        "kernel_setup_s": round(report.setup_seconds, 3),
        "kernel_tuning_s": round(tuning, 3),
        "compiled": report.compiled,
        "compile_s": round(report.compile_seconds, 3),
    }


def sparse_kernels(
    module: torch.nn.Module, kernels: str = "auto", *, cache_dir: str | None = None, compiled: bool = False, log=print
) -> KernelReport:
    """Run any network's pruned ``Conv2d``/``Linear`` layers with the sparse kernels, in place.

    For a model from outside a run, e.g. an exported ticket loaded in plain diffusers::

        pipeline = DDPMPipeline.from_pretrained("exported/ticket")
        ddpm_lottery.sparse_kernels(pipeline.unet)        # layers with zeros: the faster kernel, timed once
        images = pipeline(batch_size=4).images

    The layers' surviving weights are their nonzero ones; the state dict is unchanged.  ``compiled=True``
    also runs the module's inference calls through ``torch.compile`` (``--compile-sampling``).
    """
    require_type(module, torch.nn.Module, "sparse_kernels' module")
    runtime = RuntimeConfig()
    runtime.kernels, runtime.kernel_cache, runtime.compile_sampling = kernels, cache_dir, compiled
    check_config(runtime)
    return install_kernels(module, runtime, log=log, what="the network")
