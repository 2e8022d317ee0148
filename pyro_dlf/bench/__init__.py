"""Benchmark harnesses run by ``pyro-dlf bench``; results go to ``benchmarks/results/``."""

from pyro_dlf.bench.uci import ABLATIONS, UCIBenchConfig, merge_results, run_uci_benchmark, target_summary, write_report

__all__ = ["ABLATIONS", "UCIBenchConfig", "merge_results", "run_uci_benchmark", "target_summary", "write_report"]
