"""Terminals: PTY, shell integration, recovery."""
