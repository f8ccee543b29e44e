"""The package version, defined here alone: ``pyproject.toml`` reads it
(setuptools ``dynamic``), the package exports it as ``__version__`` and
the writer records it as the producer's version in every file."""

__version__ = "0.2.0"
