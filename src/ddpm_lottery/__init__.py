"""ddpm-lottery: find, measure and use winning lottery tickets in diffusion models."""

__version__ = "0.1.0"
