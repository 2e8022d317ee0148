"""Packaging: the license, changelog and type marker ship; a source checkout imports and collects tests."""

import importlib.resources
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_license_changelog_and_type_marker():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    import pyro_dlf

    assert f"## {pyro_dlf.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    assert importlib.resources.files("pyro_dlf").joinpath("py.typed").is_file()  # installed with the package


def test_a_source_checkout_imports_the_subpackages_and_runs_pytest():
    """From the repository root the local pyro_dlf/ shadows the installed one; models/ and guides/ must still import."""
    code = "import pyro_dlf.models, pyro_dlf.guides; print(pyro_dlf.models.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert pathlib.Path(done.stdout.strip()).resolve() == ROOT / "models" / "__init__.py"
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/test_api.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_library_wheel_holds_every_library_module_and_no_lab_code(tmp_path):
    """``pip wheel .`` (from a copy of the checkout without build leftovers) builds the library, every module of
    ``pyro_dlf/``, ``models/`` and ``guides/``, and nothing of the lab (benchmarks, baselines, loaders, metrics)."""
    import shutil
    import zipfile

    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".ci-venv", "build", "dist", "*.egg-info",
                                                                "__pycache__", "_build", "_generated", "cache", "notebooks"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheel"), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("pyro_dlf-*.whl")
    names = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    expected = {f"pyro_dlf/{p.relative_to(ROOT / 'pyro_dlf').as_posix()}" for p in (ROOT / "pyro_dlf").rglob("*.py")}
    for folder in ("models", "guides"):
        expected |= {f"pyro_dlf/{folder}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*.py")}
    assert expected - names == set(), "modules missing from the wheel (add their package to pyproject.toml)"
    assert names - expected == set(), "files in the wheel that are not library modules"


def test_the_lab_lists_every_one_of_its_packages():
    """The lab's explicit package list (benchmarks/pyproject.toml) names every folder of pyro_dlf_bench."""
    import tomllib

    config = tomllib.loads((ROOT / "benchmarks" / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    folder = ROOT / "benchmarks" / "pyro_dlf_bench"
    found = {".".join(("pyro_dlf_bench", *p.parent.relative_to(folder).parts)) for p in folder.rglob("__init__.py")}
    assert listed == found
