"""Tolstoy: a durable workflow engine whose executions you can watch live."""

__version__ = "0.1.0"

__all__ = ["__version__"]
