"""Benchmark harnesses run by ``pyro-dlf bench``; results go to ``benchmarks/results/``."""

from pyro_dlf.bench.uci import ABLATIONS, UCIBenchConfig, run_uci_benchmark, write_report

__all__ = ["ABLATIONS", "UCIBenchConfig", "run_uci_benchmark", "write_report"]
