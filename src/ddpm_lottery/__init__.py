"""ddpm-lottery: find, measure and use winning lottery tickets in diffusion models.

The public API is importable from here; its names load on first use (PEP 562), so ``import
ddpm_lottery`` and ``ddpm-lottery --help`` stay cheap and load neither torch nor diffusers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(
        [
            "EvaluationResult",
            "LevelResult",
            "RunResult",
            "StudyResult",
            "evaluate",
            "export",
            "find_ticket",
            "load_network",
            "load_pipeline",
            "load_run_config",
            "run_study",
            "sample",
            "train",
            "tune_range",
        ],
        "ddpm_lottery.api",
    ),
    **dict.fromkeys(
        [
            "DataConfig",
            "DiffusionConfig",
            "EvalConfig",
            "LotteryConfig",
            "ModelConfig",
            "PruneConfig",
            "RunConfig",
            "SampleConfig",
            "TrainConfig",
        ],
        "ddpm_lottery.config",
    ),
    "compare_runs": "ddpm_lottery.measures.cka",
    "build_report": "ddpm_lottery.reporting.report",
    "load_study": "ddpm_lottery.study.spec",
    "write_findings": "ddpm_lottery.findings.render",
    "frontier": "ddpm_lottery.measures.frontier",
    "sparse_kernels": "ddpm_lottery.kernels.install",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddpm_lottery' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
