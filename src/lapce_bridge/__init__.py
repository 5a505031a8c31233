"""lapce-bridge: a resilient, self-measuring backend for AI coding assistants."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lapce-ai-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
