"""The benchmark harness: `make bench` measures speed goals as ratios in one run."""
