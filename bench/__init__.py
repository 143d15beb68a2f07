"""The benchmark: run it with scripts/bench.sh (see bench/run.py)."""
