"""The README's Pyro example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_pyro_example_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    draws = namespace["draws"]
    assert draws.shape == (1000, 1, 100)
    assert namespace["loss"] < namespace["first_loss"]


def test_readme_one_call_example_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2, "README has no one-call example"
    namespace = {}
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    prediction = namespace["prediction"]
    assert prediction.function_samples.shape == (1000, 200)
    assert namespace["student"].dlf.hidden in ((16,), (32,))


def test_readme_design_example_reaches_beyond_the_data():
    """The "Beyond the data" snippet on the one-call example's ensemble: a design is chosen and recorded, and the
    student's epistemic variance far beyond the data exceeds its variance in range."""
    blocks = [b for b in _blocks() if "design_choice" in b]
    assert blocks, "README has no design example"
    namespace = {}
    exec(compile(_blocks()[1], "README.md", "exec"), namespace)  # noqa: S102 - the one-call example's ensemble
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - the design example
    choice = namespace["choice"]
    assert choice.scores and choice.design in ("given", "around", "beyond") and choice.num_data_points == 200
    far = namespace["far"]
    assert far[1] > far[0]


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_prior_example_recovers_the_truth():
    """The README's prior snippet, run on the one-call example's student: NUTS mixes and recovers
    the new data's noise scale, SVI agrees with it, and the posterior of f beats the raw data."""
    import pyro
    import torch
    from pyro.infer.mcmc.util import diagnostics

    blocks = _blocks()
    prior = [b for b in blocks if "NUTS" in b]
    assert len(blocks) >= 3 and prior, "README has no prior example"
    namespace = {}
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # noqa: S102 - the student of the one-call example
    exec(compile(prior[0], "README.md", "exec"), namespace)  # noqa: S102 - the prior example
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
