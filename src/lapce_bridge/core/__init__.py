"""The resilience kernel: pure policy objects with no I/O and no asyncio import.

Everything here decides; thin async drivers elsewhere carry the decisions out. Anything
that waits or measures time takes a `Clock`, so tests run on virtual time.
"""
