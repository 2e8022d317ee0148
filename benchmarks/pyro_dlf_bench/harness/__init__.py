"""Benchmark harnesses run by ``pyro-dlf bench``; results go to ``benchmarks/results/``."""

from pyro_dlf_bench.harness.images import ImagesBenchConfig, run_images_benchmark, write_images_report
from pyro_dlf_bench.harness.uci import ABLATIONS, UCIBenchConfig, merge_results, run_uci_benchmark, target_summary, write_report

__all__ = ["ImagesBenchConfig", "run_images_benchmark", "write_images_report", "ABLATIONS", "UCIBenchConfig", "merge_results", "run_uci_benchmark", "target_summary", "write_report"]
