"""`lapce-bridge bench`: the figures of BENCHMARKS.md, measured on this machine in one run."""
