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


def test_the_library_wheel_holds_no_lab_code(tmp_path):
    """``pip wheel .`` builds the library alone: the benchmarks, baselines, loaders and metrics are the lab's."""
    import zipfile

    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("pyro_dlf-*.whl")
    names = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")]
    assert "pyro_dlf/models/deep_latent_factor.py" in names and "pyro_dlf/guides/exact_factor_posterior.py" in names
    lab = [n for n in names if not n.startswith("pyro_dlf/") or any(
        word in n for word in ("bench", "baselines", "datasets", "metrics", "demo", "text_encoder", "language_model"))]
    assert lab == []
