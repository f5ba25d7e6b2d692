"""Speed and memory benchmarks of mack; `python -m benchmarks.run_all` runs them all."""
