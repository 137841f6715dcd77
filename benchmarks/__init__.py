"""The benchmark suite: ``run_bench(BenchOptions(...))`` or ``vlpserve bench``."""

from vlpserve.benchmarks.suite import ALL_SCENARIOS, BenchOptions, run_bench

__all__ = ["ALL_SCENARIOS", "BenchOptions", "run_bench"]
