"""pyro_dlf_bench: the lab that measures pyro_dlf.

:mod:`~pyro_dlf_bench.harness` (the benchmarks ``pyro-dlf bench`` runs), :mod:`~pyro_dlf_bench.baselines` (the
teacher ensembles and the rival students), :mod:`~pyro_dlf_bench.datasets` (UCI, image and text loaders and
splits), :mod:`~pyro_dlf_bench.metrics` (the scores of the result tables), and the text models of the language
benchmarks. The library never imports it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
