"""eikd-edge: distil a compact edge student from a teacher and unlabeled field images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eikd-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
