"""`lapce-bridge chaos`: real faults injected into running parts, recovery measured.

Each scenario breaks something for real (kills a shell, kills the server, fills memory, feeds
the parser garbage, makes the disk fail) and reports the recovery time (RTO) and how much was
lost (RPO, which must always be 0) against BENCHMARKS.md.
"""
