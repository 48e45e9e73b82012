"""The package version (read by pyproject.toml without importing the engine)."""

__version__ = "0.5.0"
