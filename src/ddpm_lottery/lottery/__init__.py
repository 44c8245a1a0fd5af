"""lottery."""
