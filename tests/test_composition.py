"""The student inside users' models: frozen by default, prefixed sites, the process as one distribution."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_dlf
from pyro_dlf import Student

from synthetic import random_dlf, synthetic_teachers


@pytest.fixture
def regression_student():
    truth, x, f = synthetic_teachers(12, num_points=40)
    return x, pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=torch.linspace(0.01, 0.02, 12), hidden=(16,),
                               num_iterations=5, mmd_steps=20, progress=False)


def _user_model(student):
    """A user's model with its own y: a DLF function plus a group offset, observed with its own noise."""
    def model(x, y=None):
        offset = pyro.sample("offset", dist.Normal(0.0, 1.0))
        function = pyro.sample("f", student.function_dist(x))
        with pyro.plate("obs", x.shape[0]):
            return pyro.sample("y", dist.Normal(function + offset, 0.1), obs=y)
    return model


def _fit(model, x, y, steps=200):
    pyro.clear_param_store()
    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(steps):
        svi.step(x, y)


def test_svi_on_a_users_model_leaves_a_frozen_student_unchanged(regression_student):
    x, student = regression_student
    x15 = x[::3][:15]
    y = torch.sin(3 * x15[:, 0])
    before = {k: v.clone() for k, v in student.dlf.state_dict().items()}
    for model in (_user_model(student), lambda x, y=None: student(x, y)):
        _fit(model, x15, y)
    after = student.dlf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Fine-tuning is the opt-in: unfrozen, the same SVI moves the network.
    student.unfreeze()
    _fit(lambda x, y=None: student(x, y), x15, y, steps=50)
    assert not torch.equal(before["loading_head.weight"], student.dlf.state_dict()["loading_head.weight"])


def test_prefixed_sites_let_the_student_sit_beside_a_users_y(regression_student):
    x, student = regression_student
    student.prefix = "dlf."

    def model(x, y=None):
        latent = student(x)  # the student's own sites: dlf.z, dlf.function, dlf.y ...
        with pyro.plate("obs", x.shape[0]):
            return pyro.sample("y", dist.Normal(latent, 0.5), obs=y)

    trace = pyro.poutine.trace(model).get_trace(x)
    names = {n for n, s in trace.nodes.items() if s["type"] == "sample"}
    assert {"dlf.z", "dlf.noise_variance", "dlf.function", "dlf.y", "y"} <= names
    assert not any(s["type"] == "param" for s in trace.nodes.values())  # frozen: no param sites


@pytest.mark.parametrize("kind", [None, 3, "full"])
def test_function_dist_is_the_distilled_process(kind):
    dlf = random_dlf(num_outputs=kind, dtype=torch.float64)
    task = "regression" if kind is None else "classification"
    student = Student(dlf, task, *((3.0, 1.0) if kind is None else (None, None)))
    x = torch.randn(6, 2, dtype=torch.float64)
    d = student.function_dist(x, include_nugget=True)
    with torch.no_grad():
        mean = dlf.mean(x).flatten()
        K = dlf.covariance(x)
        if dlf.separable:
            K = torch.kron(*K)  # (point, class) pairs, class fastest
    sigma2 = float(dlf.noise_variance)
    torch.testing.assert_close(d.mean, mean)
    torch.testing.assert_close(d.covariance_matrix, K + sigma2 * torch.eye(len(mean), dtype=K.dtype), rtol=1e-10, atol=1e-12)
    smooth = student.function_dist(x, include_nugget=False)
    torch.testing.assert_close(smooth.covariance_matrix, K + 1e-6 * sigma2 * torch.eye(len(mean), dtype=K.dtype), rtol=1e-10, atol=1e-12)


def test_em_refuses_a_frozen_student(regression_student):
    from pyro_dlf.guides import ExactFactorPosterior
    from pyro_dlf.infer import EM

    x, student = regression_student
    with pytest.raises(ValueError, match="frozen .* student.unfreeze"):
        EM(student.dlf, ExactFactorPosterior(student.dlf), pyro.optim.Adam({"lr": 1e-2}))


def test_training_a_gpytorch_model_built_on_the_student_leaves_it_unchanged(regression_student):
    import gpytorch

    from pyro_dlf.kernels import DLFKernel, DLFMean

    x, student = regression_student

    class GP(gpytorch.models.ExactGP):
        def __init__(self, x, y, likelihood):
            super().__init__(x, y, likelihood)
            self.mean_module, self.covar_module = DLFMean(student.dlf), gpytorch.kernels.ScaleKernel(DLFKernel(student.dlf))

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    y = torch.sin(3 * x[:, 0])
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    model = GP(x, y, likelihood)
    before = {k: v.clone() for k, v in student.dlf.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)  # the wrapping model's parameters, student's included
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    model.train()
    for _ in range(20):
        optimizer.zero_grad()
        (-mll(model(x), y)).backward()
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in student.dlf.state_dict().items())
    assert float(model.covar_module.raw_outputscale) != 0.0  # the GP's own hyperparameters did train
