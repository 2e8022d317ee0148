"""The examples of the README and of the user guide run as written.

The README's example is the quick start's one-call example, word for word (checked below), so running the
quick start's block runs the README's. The Pyro workflow, the design ("beyond the data") and the prior
examples live in the user guide (``docs/guide/``); each is found by a name it contains and executed from there.
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide"
QUICKSTART = GUIDE / "quickstart.md"
PYRO_WORKFLOW = GUIDE / "pyro_workflow.md"
BEYOND_THE_DATA = GUIDE / "beyond_the_data.md"
PRIOR = GUIDE / "prior.md"


def _python_blocks(path: pathlib.Path) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def _example(path: pathlib.Path, marker: str) -> str:
    """The first python block of the page that contains ``marker``."""
    blocks = [b for b in _python_blocks(path) if marker in b]
    assert blocks, f"{path.relative_to(ROOT)} has no python example containing {marker!r}"
    return blocks[0]


def _run(path: pathlib.Path, code: str, namespace: dict) -> dict:
    exec(compile(code, str(path.relative_to(ROOT)), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


def _one_call_example() -> str:
    return _example(QUICKSTART, "pyro_dlf.distill(x_design")


def test_readme_example_is_the_quick_start_one_call_example():
    blocks = _python_blocks(README)
    assert blocks, "README has no python example"
    assert blocks[0] == _one_call_example(), "the README's example and the quick start's one-call example differ"


def test_pyro_workflow_example_runs():
    namespace = _run(PYRO_WORKFLOW, _example(PYRO_WORKFLOW, "Predictive(model"), {})
    draws = namespace["draws"]
    assert draws.shape == (1000, 1, 100)
    assert namespace["loss"] < namespace["first_loss"]


def test_one_call_example_runs():
    namespace = _run(QUICKSTART, _one_call_example(), {})
    prediction = namespace["prediction"]
    assert prediction.function_samples.shape == (1000, 200)
    assert namespace["student"].dlf.hidden in ((16,), (32,))


def test_design_example_reaches_beyond_the_data():
    """The "Beyond the data" snippet on the one-call example's ensemble: a design is chosen and recorded, and the
    student's epistemic variance far beyond the data exceeds its variance in range."""
    namespace = _run(QUICKSTART, _one_call_example(), {})  # the one-call example's ensemble
    _run(BEYOND_THE_DATA, _example(BEYOND_THE_DATA, "design_choice"), namespace)
    choice = namespace["choice"]
    assert choice.scores and choice.design in ("given", "around", "beyond") and choice.num_data_points == 200
    far = namespace["far"]
    assert far[1] > far[0]


def test_prior_example_recovers_the_truth():
    """The prior snippet, run on the one-call example's student: NUTS mixes and recovers
    the new data's noise scale, SVI agrees with it, and the posterior of f beats the raw data."""
    import pyro
    import torch
    from pyro.infer.mcmc.util import diagnostics

    namespace = _run(QUICKSTART, _one_call_example(), {})  # the student of the one-call example
    _run(PRIOR, _example(PRIOR, "NUTS"), namespace)
    mcmc, posterior, x_obs, y_obs = namespace["mcmc"], namespace["posterior"], namespace["x_obs"], namespace["y_obs"]
    assert posterior["sigma"].shape == (500,)
    r_hat = {site: float(stats["r_hat"].max()) for site, stats in diagnostics(mcmc.get_samples(group_by_chain=True)).items()}
    assert max(r_hat.values()) < 1.01, r_hat
    lower, upper = torch.quantile(posterior["sigma"], torch.tensor([0.05, 0.95])).tolist()
    assert lower < 0.2 < upper  # the noise scale the data were drawn with
    guide = namespace["guide"]
    with torch.no_grad():
        svi_sigma = float(guide.median(x_obs, y_obs)["sigma"])
    assert lower < svi_sigma < upper
    # The prior carries the ensemble's function: f's posterior mean is nearer the truth than the data are.
    truth = torch.sin(2 * x_obs[:, 0])
    f_error = (posterior["f"].mean(0) - truth).pow(2).mean().sqrt()
    data_error = (y_obs - truth).pow(2).mean().sqrt()
    assert f_error < data_error
    assert pyro.get_param_store().keys()  # SVI fitted its guide, not the frozen student
    assert not any(name.startswith("student_") for name in pyro.get_param_store().keys())
