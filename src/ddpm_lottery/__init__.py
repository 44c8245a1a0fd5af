"""ddpm-lottery: find, measure and use winning lottery tickets in diffusion models."""

__version__ = "0.1.0"

from .api import load_network, load_run_config, sample, train  # noqa: E402
from .config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig  # noqa: E402

__all__ = ["DataConfig", "DiffusionConfig", "ModelConfig", "RunConfig", "SampleConfig", "TrainConfig",
           "load_network", "load_run_config", "sample", "train", "__version__"]
