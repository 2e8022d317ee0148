"""pyro_dlf: Gaussian distillation of deep ensembles with deep latent factor models.

The student is a Gaussian process whose mean ``μ(x)`` and factor loadings
``Φ(x)`` come from one small network; each teacher is one draw of it.
"""

__version__ = "0.1.0"

from pyro_dlf.api import distill, evaluate_teachers  # noqa: E402
from pyro_dlf.student import ClassificationPrediction, RegressionPrediction, Student  # noqa: E402

__all__ = ["__version__", "distill", "evaluate_teachers", "Student", "RegressionPrediction", "ClassificationPrediction"]
