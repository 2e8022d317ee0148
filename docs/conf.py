"""Sphinx configuration of the pyro_dlf documentation site.

Build it from the repository root (after ``pip install -c constraints.txt ".[docs]"``)::

    sphinx-build -W --keep-going -q -b html docs docs/_build/html

The notebooks (``notebooks/``) and the benchmark reports (``benchmarks/results/``) live outside
``docs/``; they are copied into ``docs/_generated/`` (ignored by git) at the start of every build and
rendered from there, the notebooks with the outputs they were committed with (nothing is executed).
"""

from __future__ import annotations

import pathlib
import shutil

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"

# The benchmark reports that have a page of their own in the site, each copied with the figures it shows.
BENCHMARK_REPORTS = [
    "uci",
    "uci_extrapolation_design",
    "images_design",
    "images_fashion_design",
    "text",
    "seqkd",
    "scale",
    "scale_diagnostics",
    "em_vs_svi",
    "predictive_cost",
    "integration_rules",
    "integration_nodes",
]


def _copy_if_changed(source: pathlib.Path, target: pathlib.Path) -> None:
    """Copy a file unless an identical copy is there already (so Sphinx's incremental builds stay incremental)."""
    if target.exists() and target.read_bytes() == source.read_bytes():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _collect_generated() -> None:
    notebooks = GENERATED / "notebooks"
    wanted = set()
    for source in sorted((ROOT / "notebooks").glob("*.ipynb")):
        _copy_if_changed(source, notebooks / source.name)
        wanted.add(notebooks / source.name)

    reports = GENERATED / "benchmarks"
    results = ROOT / "benchmarks" / "results"
    for name in BENCHMARK_REPORTS:
        report = results / f"{name}.md"
        _copy_if_changed(report, reports / report.name)
        wanted.add(reports / report.name)
        text = report.read_text(encoding="utf-8")
        for figure in sorted(results.glob("*.png")):
            if f"]({figure.name})" in text:
                _copy_if_changed(figure, reports / figure.name)
                wanted.add(reports / figure.name)

    # Drop copies whose source is gone, so a removed notebook or report does not linger in the site.
    for stale in [p for p in GENERATED.rglob("*") if p.is_file() and p not in wanted]:
        stale.unlink()


_collect_generated()

# -- Project ------------------------------------------------------------------------------------

project = "pyro_dlf"
author = "the pyro_dlf authors"
copyright = "the pyro_dlf authors"  # noqa: A001 - Sphinx's name for it

try:
    from pyro_dlf import __version__ as release
except ImportError:  # the API pages need the package; the rest of the site builds without it
    release = ""
version = release

# -- General ------------------------------------------------------------------------------------

extensions = [
    "myst_nb",  # MyST Markdown pages and the notebooks (it registers the MyST parser itself)
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "jupyter_execute"]

# MyST: "$...$" maths, "{eval-rst}" blocks, heading anchors so that pages can link to sections.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Notebooks are shown with their committed outputs; the site never runs them.
nb_execution_mode = "off"
nb_merge_streams = True

# -- autodoc --------------------------------------------------------------------------------------

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"

# -- HTML ---------------------------------------------------------------------------------------

html_theme = "furo"
html_title = "pyro_dlf"
html_static_path: list[str] = []
