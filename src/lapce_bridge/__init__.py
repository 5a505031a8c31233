"""lapce-bridge: a resilient, self-measuring backend for AI coding assistants."""

# The one place the version is written (hatchling reads it from here when building): asking
# importlib.metadata instead costs about 30 ms at every start of every command.
__version__ = "0.1.0"

__all__ = ["__version__"]
