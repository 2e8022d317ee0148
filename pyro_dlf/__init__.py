"""pyro_dlf: Gaussian distillation of deep ensembles with deep latent factor models.

The student is a Gaussian process whose mean ``μ(x)`` and factor loadings
``Φ(x)`` come from one small network; each teacher is one draw of it.
Docstrings cite the repository's mathematics page, ``docs/mathematics.md``, by
section ("mathematics §4").
"""

import os as _os

# In a source checkout the subpackages pyro_dlf.models and pyro_dlf.guides live in the top-level
# folders models/ and guides/ (the installed package maps them into place). Let the package's
# search path reach them, so `import pyro_dlf.models` also works from the repository root.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "models")) and all(
        _os.path.isfile(_os.path.join(_root, sub, "__init__.py")) for sub in ("models", "guides")):
    __path__.append(_root)  # noqa: F821 - the package's own __path__

from pyro_dlf._version import __version__  # noqa: E402
from pyro_dlf.api import distill, evaluate_teachers  # noqa: E402
from pyro_dlf.student import ClassificationPrediction, RegressionPrediction, Student  # noqa: E402

__all__ = ["__version__", "distill", "evaluate_teachers", "Student", "RegressionPrediction", "ClassificationPrediction"]
