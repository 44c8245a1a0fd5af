"""``--compile-sampling``: every network compiled in one process gets its own graphs, so none runs into
dynamo's recompile limit (and its warnings) because other networks were compiled before it."""

import logging

import torch

from ddpm_lottery.config import RuntimeConfig
from ddpm_lottery.kernels import install


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_networks_of_different_structures_compile_once_each_without_recompile_warnings(monkeypatch):
    compile_eagerly = torch.compile  # the inductor's code generation is not what is tested: dynamo's caching is

    def compile_for_test(fn, **options):
        return compile_eagerly(fn, backend="eager", **options)

    monkeypatch.setattr(install.torch, "compile", compile_for_test)
    # reached by the third network otherwise; config.patch restores dynamo's own setting (a monkeypatch's undo
    # left it hidden, and every later compile in the process failed)
    limit = torch._dynamo.config.patch(recompile_limit=2)
    limit.__enter__()
    torch._dynamo.reset()
    handler = _Warnings()
    logging.getLogger("torch._dynamo").addHandler(handler)
    try:
        runtime = RuntimeConfig()
        runtime.kernels, runtime.compile_sampling = "dense", True
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        for depth in range(5):  # five structures of one class: one shared forward code object
            model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1), *[torch.nn.SiLU()] * (depth + 1))
            report = install.install_kernels(model, runtime, log=lambda *_: None)
            x = torch.randn(1, 2, 4, 4)
            with torch.no_grad():
                model(x)  # the shape's first call: eager
                assert torch.equal(model(x), model.forward.eager(x))  # compiled, and the same numbers
            assert report.compiled
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 5  # one graph each, none eager
        assert not [m for m in handler.messages if "recompile" in m]
    finally:
        logging.getLogger("torch._dynamo").removeHandler(handler)
        limit.__exit__(None, None, None)
        torch._dynamo.reset()
