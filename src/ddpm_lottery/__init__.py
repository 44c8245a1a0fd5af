"""ddpm-lottery: find, measure and use winning lottery tickets in diffusion models."""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    EvaluationResult, LevelResult, RunResult, StudyResult, export, load_network, load_pipeline, load_run_config, sample,
    train,
)
from .config import (  # noqa: E402
    DataConfig, DiffusionConfig, EvalConfig, LotteryConfig, ModelConfig, PruneConfig, RunConfig, SampleConfig,
    TrainConfig,
)
from .lottery import find_ticket  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .cka import compare_runs  # noqa: E402
from .report import build_report  # noqa: E402
from .study import load_study, run_study  # noqa: E402
from .findings import write_findings  # noqa: E402
from .frontier import frontier  # noqa: E402
from .kernels.install import sparse_kernels  # noqa: E402

__all__ = ["EvaluationResult", "LevelResult", "RunResult", "StudyResult", "DataConfig", "DiffusionConfig", "EvalConfig", "LotteryConfig", "ModelConfig", "PruneConfig", "RunConfig",
           "SampleConfig", "TrainConfig", "build_report", "compare_runs", "evaluate", "export", "find_ticket", "frontier",
           "load_network", "load_pipeline", "load_run_config", "load_study", "run_study", "sample", "sparse_kernels", "train", "write_findings",
           "__version__"]
