"""Tests for pyro_dlf_bench.metrics against independent references (scipy, properscoring, sklearn)."""

import math

import numpy as np
import properscoring as ps
import pytest
import torch
from scipy import integrate, special, stats
from sklearn.metrics import roc_auc_score

import pyro_dlf_bench.metrics as M

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mixture(K=3, m=7, seed=0):
    g = _gen(seed)
    means = torch.randn(K, m, generator=g, dtype=DT) * 2.0
    variances = torch.rand(K, m, generator=g, dtype=DT) * 1.5 + 0.1
    w = torch.rand(K, generator=g, dtype=DT) + 0.2
    w = w / w.sum()
    y = torch.randn(m, generator=g, dtype=DT) * 2.0
    return means, variances, w, y


def _mixture_cdf_np(t, mu, sd, w):
    return float(np.sum(w * stats.norm.cdf(t, loc=mu, scale=sd)))


# --------------------------------------------------------------------------- #
# Gaussian metrics
# --------------------------------------------------------------------------- #
def test_rmse_hand_example():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=DT)
    y = torch.tensor([1.0, 0.0, 3.0, 6.0], dtype=DT)
    assert M.rmse(pred, y).item() == pytest.approx(math.sqrt(8.0 / 4.0), rel=1e-14)


def test_gaussian_nll_matches_scipy():
    g = _gen(1)
    mu = torch.randn(50, generator=g, dtype=DT)
    var = torch.rand(50, generator=g, dtype=DT) + 0.05
    y = torch.randn(50, generator=g, dtype=DT) * 2
    ref = -stats.norm.logpdf(y.numpy(), loc=mu.numpy(), scale=np.sqrt(var.numpy()))
    out = M.gaussian_nll(mu, var, y, reduction="none")
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)
    assert M.gaussian_nll(mu, var, y).item() == pytest.approx(ref.mean(), rel=1e-12)


def test_gaussian_crps_matches_properscoring():
    g = _gen(2)
    mu = torch.randn(100, generator=g, dtype=DT)
    var = torch.rand(100, generator=g, dtype=DT) * 3 + 0.01
    y = torch.randn(100, generator=g, dtype=DT) * 3
    ref = ps.crps_gaussian(y.numpy(), mu=mu.numpy(), sig=np.sqrt(var.numpy()))
    out = M.gaussian_crps(mu, var, y, reduction="none")
    assert out.shape == (100,)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12)
    assert M.gaussian_crps(mu, var, y).item() == pytest.approx(ref.mean(), rel=1e-10)


def test_float32_stays_float32():
    mu = torch.zeros(4)
    var = torch.ones(4)
    y = torch.ones(4)
    assert M.gaussian_crps(mu, var, y).dtype == torch.float32
    assert M.mixture_crps(mu[None], var[None], y).dtype == torch.float32


# --------------------------------------------------------------------------- #
# Mixture CRPS / NLL
# --------------------------------------------------------------------------- #
def test_mixture_crps_k1_equals_gaussian_crps():
    means, variances, _, y = _mixture(K=1, m=20, seed=3)
    ref = M.gaussian_crps(means[0], variances[0], y, reduction="none")
    out2d = M.mixture_crps(means, variances, y, reduction="none")
    out1d = M.mixture_crps(means[0], variances[0], y, reduction="none")
    torch.testing.assert_close(out2d, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out1d, ref, rtol=1e-12, atol=1e-12)


def test_mixture_crps_matches_numerical_integral():
    means, variances, w, y = _mixture(K=3, m=4, seed=4)
    out = M.mixture_crps(means, variances, y, weights=w, reduction="none")
    sd = variances.sqrt().numpy()
    wn = w.numpy()
    for i in range(4):
        mu_i, sd_i, yi = means[:, i].numpy(), sd[:, i], float(y[i])
        F = lambda t: _mixture_cdf_np(t, mu_i, sd_i, wn)  # noqa: E731
        left, _ = integrate.quad(lambda t: F(t) ** 2, -np.inf, yi, epsabs=1e-12, epsrel=1e-12)
        right, _ = integrate.quad(lambda t: (1 - F(t)) ** 2, yi, np.inf, epsabs=1e-12, epsrel=1e-12)
        assert out[i].item() == pytest.approx(left + right, rel=1e-7, abs=1e-9)


def test_mixture_crps_point_masses_match_crps_ensemble():
    # With vanishing variances the mixture is a weighted ensemble of point masses.
    means, _, w, y = _mixture(K=5, m=30, seed=5)
    tiny = torch.full_like(means, 1e-16)
    out = M.mixture_crps(means, tiny, y, weights=w, reduction="none")
    ref = ps.crps_ensemble(
        y.numpy(), means.T.numpy(), weights=np.broadcast_to(w.numpy(), (30, 5))
    )
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-7)


def test_mixture_crps_chunking_is_exact(monkeypatch):
    means, variances, w, y = _mixture(K=6, m=23, seed=6)
    full = M.mixture_crps(means, variances, y, weights=w, reduction="none")
    # budget < K^2 forces row blocks as well as input chunks
    for budget in (1, 5, 20, 40, 100):
        monkeypatch.setattr(M, "_MAX_CHUNK_ELEMENTS", budget)
        chunked = M.mixture_crps(means, variances, y, weights=w, reduction="none")
        torch.testing.assert_close(chunked, full, rtol=1e-13, atol=1e-13)


def test_mixture_crps_uniform_default_weights():
    means, variances, _, y = _mixture(K=4, m=9, seed=7)
    uniform = torch.full((4,), 0.25, dtype=DT)
    torch.testing.assert_close(
        M.mixture_crps(means, variances, y), M.mixture_crps(means, variances, y, weights=uniform)
    )


def test_mixture_crps_gradcheck():
    means, variances, w, y = _mixture(K=3, m=4, seed=8)
    means.requires_grad_(True)
    variances.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda mu, v: M.mixture_crps(mu, v, y, weights=w, reduction="none"), (means, variances)
    )


def test_mixture_nll_matches_scipy():
    means, variances, w, y = _mixture(K=4, m=25, seed=9)
    pdf = stats.norm.pdf(y.numpy()[None], loc=means.numpy(), scale=np.sqrt(variances.numpy()))
    ref = -np.log((w.numpy()[:, None] * pdf).sum(0))
    out = M.mixture_nll(means, variances, y, weights=w, reduction="none")
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    assert M.mixture_nll(means, variances, y, weights=w).item() == pytest.approx(ref.mean(), rel=1e-12)


def test_mixture_nll_k1_equals_gaussian_nll_and_is_stable_in_tails():
    means, variances, _, y = _mixture(K=1, m=10, seed=10)
    torch.testing.assert_close(
        M.mixture_nll(means, variances, y, reduction="none"),
        M.gaussian_nll(means[0], variances[0], y, reduction="none"),
    )
    # 1e3 standard deviations out: the densities underflow, logsumexp must not.
    mu = torch.tensor([[0.0], [1.0]], dtype=DT)
    var = torch.ones(2, 1, dtype=DT)
    yf = torch.tensor([1000.0], dtype=DT)
    logpdf = stats.norm.logpdf(1000.0, loc=np.array([0.0, 1.0]), scale=1.0)
    ref = -special.logsumexp(logpdf + np.log(0.5))
    out = M.mixture_nll(mu, var, yf)
    assert torch.isfinite(out)
    assert out.item() == pytest.approx(ref, rel=1e-12)


# --------------------------------------------------------------------------- #
# Sample CRPS
# --------------------------------------------------------------------------- #
def test_sample_crps_matches_crps_ensemble():
    g = _gen(11)
    samples = torch.randn(37, 15, generator=g, dtype=DT)
    y = torch.randn(15, generator=g, dtype=DT)
    ref = ps.crps_ensemble(y.numpy(), samples.T.numpy())
    out = M.sample_crps(samples, y, reduction="none")
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12)
    assert M.sample_crps(samples, y).item() == pytest.approx(ref.mean(), rel=1e-10)


def test_sample_crps_with_ties_and_single_sample():
    g = _gen(12)
    samples = torch.randint(0, 4, (20, 6), generator=g).to(DT)  # many ties
    y = torch.tensor([0.0, 1.5, 3.0, -1.0, 2.0, 5.0], dtype=DT)
    ref = ps.crps_ensemble(y.numpy(), samples.T.numpy())
    np.testing.assert_allclose(M.sample_crps(samples, y, reduction="none").numpy(), ref, rtol=1e-12)
    # S = 1: CRPS is the absolute error
    torch.testing.assert_close(M.sample_crps(samples[:1], y, reduction="none"), (samples[0] - y).abs())


# --------------------------------------------------------------------------- #
# Quantiles and coverage
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("level", [0.01, 0.025, 0.5, 0.9, 0.975, 0.999])
def test_mixture_quantile_inverts_cdf(level):
    means, variances, w, _ = _mixture(K=4, m=12, seed=13)
    q = M.mixture_quantile(means, variances, level, weights=w)
    assert q.shape == (12,)
    sd = variances.sqrt().numpy()
    for i in range(12):
        cdf = _mixture_cdf_np(q[i].item(), means[:, i].numpy(), sd[:, i], w.numpy())
        assert cdf == pytest.approx(level, abs=1e-6)


def test_mixture_quantile_single_gaussian_and_zero_weight():
    mu = torch.tensor([0.0, 1.0, -3.0], dtype=DT)
    var = torch.tensor([1.0, 4.0, 0.25], dtype=DT)
    q = M.mixture_quantile(mu, var, 0.9)
    ref = stats.norm.ppf(0.9, loc=mu.numpy(), scale=np.sqrt(var.numpy()))
    np.testing.assert_allclose(q.numpy(), ref, rtol=1e-12)
    # A zero-weight component far away must not affect the answer.
    means = torch.stack([mu, mu + 100.0])
    variances = torch.stack([var, var])
    w = torch.tensor([1.0, 0.0], dtype=DT)
    np.testing.assert_allclose(M.mixture_quantile(means, variances, 0.9, weights=w).numpy(), ref, rtol=1e-9)


def test_interval_coverage_gaussian_draws():
    N = 20000
    g = _gen(14)
    mu = torch.randn(N, generator=g, dtype=DT)
    var = torch.rand(N, generator=g, dtype=DT) + 0.1
    y = mu + var.sqrt() * torch.randn(N, generator=g, dtype=DT)
    # Binomial sampling error: tolerance = 4 * sqrt(0.95 * 0.05 / N).
    tol = 4 * math.sqrt(0.95 * 0.05 / N)
    cov = M.interval_coverage(mu, var, y, level=0.95)
    assert abs(cov.item() - 0.95) < tol
    per_point = M.interval_coverage(mu, var, y, level=0.95, reduction="none")
    assert per_point.shape == (N,) and set(per_point.unique().tolist()) <= {0.0, 1.0}
    # The test has power: an interval from half the variance misses far too often.
    assert abs(M.interval_coverage(mu, var / 2, y).item() - 0.95) > tol


def test_interval_coverage_exact_edges():
    # N(mu, 4): the central 95% interval is mu +- 1.959964 * 2.
    mu = torch.full((6,), 3.0, dtype=DT)
    var = torch.full((6,), 4.0, dtype=DT)
    y = mu + 2.0 * torch.tensor([-1.97, -1.95, 0.0, 1.95, 1.97, 1.9599], dtype=DT)
    out = M.interval_coverage(mu, var, y, level=0.95, reduction="none")
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 1.0], dtype=DT))
    assert M.interval_coverage(mu, var, y).item() == pytest.approx(4 / 6)


def test_interval_coverage_mixture_draws():
    N, K = 20000, 3
    g = _gen(15)
    means = torch.randn(K, N, generator=g, dtype=DT) * 2
    variances = torch.rand(K, N, generator=g, dtype=DT) + 0.2
    w = torch.tensor([0.5, 0.3, 0.2], dtype=DT)
    comp = torch.multinomial(w, N, replacement=True, generator=g)
    idx = torch.arange(N)
    y = means[comp, idx] + variances[comp, idx].sqrt() * torch.randn(N, generator=g, dtype=DT)
    tol = 4 * math.sqrt(0.95 * 0.05 / N)  # 4 binomial standard errors
    assert abs(M.interval_coverage(means, variances, y, 0.95, weights=w).item() - 0.95) < tol


# --------------------------------------------------------------------------- #
# Variance ratio
# --------------------------------------------------------------------------- #
def test_variance_ratio():
    g = _gen(16)
    teachers = torch.randn(10, 30, generator=g, dtype=DT)
    student = torch.from_numpy(np.var(teachers.numpy(), axis=0, ddof=1))
    assert M.variance_ratio(student, teachers).item() == pytest.approx(1.0, rel=1e-12)
    assert M.variance_ratio(2 * student, teachers).item() == pytest.approx(2.0, rel=1e-12)
    # biased (n) variance must NOT give 1: the ratio is (n-1)/n
    biased = torch.from_numpy(np.var(teachers.numpy(), axis=0, ddof=0))
    assert M.variance_ratio(biased, teachers).item() == pytest.approx(0.9, rel=1e-12)
    teachers3 = torch.randn(5, 8, 3, generator=g, dtype=DT)
    student3 = torch.from_numpy(np.var(teachers3.numpy(), axis=0, ddof=1))
    assert M.variance_ratio(student3, teachers3).item() == pytest.approx(1.0, rel=1e-12)


# --------------------------------------------------------------------------- #
# Classification
# --------------------------------------------------------------------------- #
PROBS = torch.tensor(
    [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]], dtype=DT
)
LABELS = torch.tensor([0, 2, 2, 1])


def test_classification_hand_example():
    # argmax: 0, 1, 2, 0 (tie -> lowest index); correct: yes, no, yes, no
    assert M.accuracy(PROBS, LABELS).item() == pytest.approx(0.5)
    nll = -np.log([0.7, 0.3, 0.5, 0.4])
    np.testing.assert_allclose(M.categorical_nll(PROBS, LABELS, reduction="none").numpy(), nll)
    assert M.categorical_nll(PROBS, LABELS).item() == pytest.approx(nll.mean())
    brier = np.array(
        [0.3**2 + 0.2**2 + 0.1**2, 0.1**2 + 0.6**2 + 0.7**2, 0.2**2 + 0.3**2 + 0.5**2, 0.4**2 + 0.6**2 + 0.2**2]
    )
    np.testing.assert_allclose(M.brier_score(PROBS, LABELS, reduction="none").numpy(), brier)
    assert M.brier_score(PROBS, LABELS).item() == pytest.approx(brier.mean())


def test_categorical_nll_clamps_zero_probability():
    probs = torch.tensor([[1.0, 0.0]], dtype=DT)
    out = M.categorical_nll(probs, torch.tensor([1]))
    assert torch.isfinite(out) and out.item() > 700


def test_ece_hand_example():
    # conf = 0.7, 0.6, 0.5, 0.4; correct = 1, 0, 1, 0.
    # 4 bins of width 0.25: (0.25, 0.5] holds {0.5 (1), 0.4 (0)}: |0.5 - 0.45| = 0.05
    #                       (0.5, 0.75] holds {0.7 (1), 0.6 (0)}: |0.5 - 0.65| = 0.15
    # ECE = 0.5 * 0.05 + 0.5 * 0.15 = 0.1
    assert M.expected_calibration_error(PROBS, LABELS, num_bins=4).item() == pytest.approx(0.1, abs=1e-12)
    # one bin: |mean acc - mean conf| = |0.5 - 0.55|
    assert M.expected_calibration_error(PROBS, LABELS, num_bins=1).item() == pytest.approx(0.05, abs=1e-12)
    # 10 bins: every point alone -> mean |correct - conf| = (0.3 + 0.6 + 0.5 + 0.4) / 4
    assert M.expected_calibration_error(PROBS, LABELS, num_bins=10).item() == pytest.approx(0.45, abs=1e-12)


def test_ece_calibrated_vs_miscalibrated():
    m, c, B = 20000, 4, 15
    g = _gen(17)
    # Dirichlet(1, ..., 1) draws as normalised exponentials (seeded generator)
    e = -torch.rand(m, c, generator=g, dtype=DT).log()
    probs = e / e.sum(-1, keepdim=True)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(-1)
    # Sampling error only: E[ECE] <= sum_b (n_b/m) sqrt(1/(4 n_b)) <= sqrt(B/m)/2; allow 3x.
    bound = 3 * math.sqrt(B / m) / 2
    assert M.expected_calibration_error(probs, labels, num_bins=B).item() < bound
    # power check: sharpened (overconfident) probabilities exceed the bound
    sharp = probs**3 / (probs**3).sum(-1, keepdim=True)
    assert M.expected_calibration_error(sharp, labels, num_bins=B).item() > bound


# --------------------------------------------------------------------------- #
# Entropy decomposition and AUROC
# --------------------------------------------------------------------------- #
def test_entropy_decomposition():
    p = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=DT)
    same = p.expand(6, 2, 3)
    total, expected, mi = M.entropy_decomposition(same)
    h = torch.tensor([-(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5)), 0.0], dtype=DT)
    torch.testing.assert_close(total, h)
    torch.testing.assert_close(expected, h)
    assert torch.all(mi >= 0) and torch.allclose(mi, torch.zeros(2, dtype=DT), atol=1e-15)

    disjoint = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=DT)  # (S=2, m=1, c=2)
    total, expected, mi = M.entropy_decomposition(disjoint)
    assert total.item() == pytest.approx(math.log(2))
    assert expected.item() == pytest.approx(0.0)
    assert mi.item() == pytest.approx(math.log(2))


def test_auroc_matches_sklearn_with_ties():
    g = _gen(18)
    s_in = torch.randint(0, 10, (200,), generator=g).to(DT)
    s_out = torch.randint(3, 13, (150,), generator=g).to(DT)
    y_true = np.r_[np.zeros(200), np.ones(150)]
    ref = roc_auc_score(y_true, np.r_[s_in.numpy(), s_out.numpy()])
    assert M.auroc(s_in, s_out) == pytest.approx(ref, abs=1e-12)
    cont_in, cont_out = torch.randn(300, generator=g, dtype=DT), torch.randn(100, generator=g, dtype=DT) + 1
    ref = roc_auc_score(np.r_[np.zeros(300), np.ones(100)], np.r_[cont_in.numpy(), cont_out.numpy()])
    assert M.auroc(cont_in, cont_out) == pytest.approx(ref, abs=1e-12)
    assert isinstance(M.auroc(cont_in, cont_out), float)
    # perfectly separated / all tied
    assert M.auroc(torch.zeros(3), torch.ones(2)) == 1.0
    assert M.auroc(torch.zeros(3), torch.zeros(2)) == 0.5


# --------------------------------------------------------------------------- #
# Cost metrics
# --------------------------------------------------------------------------- #
def test_count_parameters():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2, bias=False))
    net[0].weight.requires_grad_(False)  # frozen parameters still count
    # 3*4 + 4 (linear) + 4 + 4 (bn affine; running stats are buffers) + 4*2
    assert M.count_parameters(net) == 12 + 4 + 8 + 8
    shared = torch.nn.Linear(2, 2)
    assert M.count_parameters(torch.nn.Sequential(shared, shared)) == 6


def test_time_call_counts_calls_and_disables_grad():
    calls = []

    def fn(a, b=0):
        calls.append(torch.is_grad_enabled())
        return a + b

    t = M.time_call(fn, 1, b=2, repeats=3, warmup=2)
    assert isinstance(t, float) and t >= 0.0
    assert len(calls) == 5 and not any(calls)


# --------------------------------------------------------------------------- #
# Bad inputs
# --------------------------------------------------------------------------- #
def test_bad_inputs_raise_with_argument_names():
    means, variances, w, y = _mixture(K=3, m=5, seed=19)
    with pytest.raises(ValueError, match="variances"):
        M.mixture_crps(means, -variances, y)
    with pytest.raises(ValueError, match="variances"):
        M.mixture_nll(means, torch.zeros_like(variances), y)
    with pytest.raises(ValueError, match="variance"):
        M.gaussian_crps(means[0], torch.zeros(5, dtype=DT), y)
    with pytest.raises(ValueError, match="variances"):
        M.mixture_crps(means, variances[:2], y)
    with pytest.raises(ValueError, match="`y`"):
        M.mixture_crps(means, variances, y[:4])
    with pytest.raises(ValueError, match="`y`"):
        M.gaussian_nll(means[0], variances[0], y[:, None])
    with pytest.raises(ValueError, match="weights"):
        M.mixture_crps(means, variances, y, weights=w * 1.1)
    with pytest.raises(ValueError, match="weights"):
        M.mixture_nll(means, variances, y, weights=w[:2] / w[:2].sum())
    with pytest.raises(ValueError, match="weights"):
        M.mixture_nll(means, variances, y, weights=torch.tensor([1.5, -0.25, -0.25], dtype=DT))
    with pytest.raises(ValueError, match="empty|m=0"):
        M.mixture_crps(means[:, :0], variances[:, :0], y[:0])
    with pytest.raises(ValueError, match="empty"):
        M.rmse(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="pred_mean"):
        M.rmse(torch.zeros(3), torch.zeros(4))
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="level"):
            M.interval_coverage(means, variances, y, level=bad)
        with pytest.raises(ValueError, match="level"):
            M.mixture_quantile(means, variances, bad)
    with pytest.raises(TypeError, match="level"):
        M.mixture_quantile(means, variances, "0.9")
    with pytest.raises(ValueError, match="reduction"):
        M.gaussian_crps(means[0], variances[0], y, reduction="sum")
    with pytest.raises(TypeError, match="means"):
        M.mixture_crps(means.numpy(), variances, y)
    with pytest.raises(ValueError, match="samples"):
        M.sample_crps(torch.zeros(0, 5, dtype=DT), y)
    with pytest.raises(ValueError, match="`y`"):
        M.sample_crps(torch.zeros(4, 5, dtype=DT), y[:3])
    with pytest.raises(ValueError, match="teacher_values"):
        M.variance_ratio(torch.ones(5, dtype=DT), torch.ones(1, 5, dtype=DT))
    with pytest.raises(ValueError, match="teacher_values"):
        M.variance_ratio(torch.ones(5, dtype=DT), torch.ones(3, 5, dtype=DT))
    with pytest.raises(ValueError, match="student_variance"):
        M.variance_ratio(torch.ones(4, dtype=DT), torch.randn(3, 5, dtype=DT))
    with pytest.raises(ValueError, match="labels"):
        M.accuracy(PROBS, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="labels"):
        M.brier_score(PROBS, LABELS.to(DT))
    with pytest.raises(ValueError, match="labels"):
        M.categorical_nll(PROBS, LABELS[:3])
    with pytest.raises(ValueError, match="probs"):
        M.categorical_nll(PROBS * 2, LABELS)
    with pytest.raises(ValueError, match="num_bins"):
        M.expected_calibration_error(PROBS, LABELS, num_bins=0)
    with pytest.raises(ValueError, match="sample_probs"):
        M.entropy_decomposition(PROBS)
    with pytest.raises(ValueError, match="scores_out"):
        M.auroc(torch.ones(3), torch.ones(0))
    with pytest.raises(TypeError, match="module"):
        M.count_parameters(3)
    with pytest.raises(ValueError, match="repeats"):
        M.time_call(lambda: None, repeats=0)


def test_reliability_bins_are_the_bins_behind_the_ece():
    g = torch.Generator().manual_seed(7)
    probs = torch.softmax(2 * torch.randn(500, 4, generator=g, dtype=torch.float64), -1)
    labels = torch.randint(0, 4, (500,), generator=g)
    bins = M.reliability_bins(probs, labels, num_bins=15)
    count = torch.tensor(bins["count"], dtype=torch.float64)
    gap = (torch.tensor(bins["accuracy"], dtype=torch.float64) - torch.tensor(bins["confidence"], dtype=torch.float64)).abs()
    assert float(count.sum()) == 500
    torch.testing.assert_close((count * gap).sum() / 500, M.expected_calibration_error(probs, labels, num_bins=15))
    # A confidence in (b/B, (b+1)/B] lands in bin b.
    one = M.reliability_bins(torch.tensor([[0.7, 0.3]], dtype=torch.float64), torch.tensor([0]), num_bins=10)
    assert one["count"][6] == 1 and one["accuracy"][6] == 1.0 and one["confidence"][6] == pytest.approx(0.7)


def test_calibrated_ece_floor_is_the_expected_ece_of_a_calibrated_classifier():
    """Exact binomial expectation against 40,000 simulated calibrated test sets (within 5 standard errors)."""
    bins = {"confidence": [0.0, 0.62, 0.9, 0.99], "accuracy": [0.0, 0.6, 0.9, 1.0], "count": [0.0, 40.0, 200.0, 60.0]}
    floor = M.calibrated_ece_floor(bins)
    g = torch.Generator().manual_seed(0)
    conf = torch.tensor([0.62, 0.9, 0.99], dtype=torch.float64)
    n = torch.tensor([40.0, 200.0, 60.0], dtype=torch.float64)
    hits = torch.binomial(n.expand(40_000, 3), conf.expand(40_000, 3), generator=g)
    ece = ((hits / n - conf).abs() * n / n.sum()).sum(1)
    assert abs(float(ece.mean()) - floor) < 5 * float(ece.std()) / 40_000 ** 0.5
    # One bin: the normal approximation sqrt(2 c (1 - c) / (π n)) to within a few per cent.
    one = M.calibrated_ece_floor({"confidence": [0.7], "count": [2000.0]})
    assert one == pytest.approx((2 * 0.7 * 0.3 / (math.pi * 2000)) ** 0.5, rel=0.03)
    with pytest.raises(ValueError, match="bins:"):
        M.calibrated_ece_floor({"confidence": [0.5], "count": [0.0]})
    with pytest.raises(ValueError, match="bins:"):
        M.calibrated_ece_floor([0.5])


def test_overconfidence_is_mean_confidence_minus_accuracy_and_bounded_by_the_ece():
    """From the bins, exactly the per-input mean of confidence − correctness; |it| ≤ ECE, with equality when
    every bin errs the same way (a predictive sharpened by a temperature below one)."""
    g = torch.Generator().manual_seed(3)
    logits = 2.0 * torch.randn(400, 3, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(-1)
    for temperature in (0.5, 1.0, 2.0):
        probs = torch.softmax(logits / temperature, -1)
        bins = M.reliability_bins(probs, labels)
        conf, pred = probs.max(-1)
        direct = float((conf - (pred == labels).double()).mean())
        assert M.overconfidence(bins) == pytest.approx(direct, abs=1e-12)
        assert abs(M.overconfidence(bins)) <= float(M.expected_calibration_error(probs, labels)) + 1e-12
    sharp = M.reliability_bins(torch.softmax(logits / 0.3, -1), labels)
    assert M.overconfidence(sharp) > 0.1
    with pytest.raises(ValueError, match="bins:"):
        M.overconfidence({"confidence": [0.5], "count": [1.0]})
    with pytest.raises(ValueError, match="bins:"):
        M.overconfidence({"confidence": [0.5], "accuracy": [0.5], "count": [0.0]})


def test_paired_difference_standard_error_is_the_spread_of_the_mean_difference_over_test_sets():
    """2,000 simulated test sets of 200 inputs whose scores share a large per-input term: the returned SE matches
    the spread of the mean difference across test sets (to 5 × the ~1.6 % sampling error of a standard deviation
    from 2,000 draws) and is far below the unpaired SE; the mean difference is unbiased."""
    g = torch.Generator().manual_seed(0)
    hard = torch.randn(2000, 200, generator=g, dtype=torch.float64)  # shared difficulty, sd 1
    a = hard + 0.1 * torch.randn(2000, 200, generator=g, dtype=torch.float64)
    b = hard + 0.05 + 0.1 * torch.randn(2000, 200, generator=g, dtype=torch.float64)
    out = torch.tensor([M.paired_difference(a[r], b[r]) for r in range(2000)])
    means, ses = out[:, 0], out[:, 1]
    truth = (2 * 0.1**2 / 200) ** 0.5
    assert abs(float(means.mean()) + 0.05) < 5 * truth / 2000**0.5
    assert float(means.std()) == pytest.approx(truth, rel=5 / (2 * 2000) ** 0.5)
    assert float(ses.mean()) == pytest.approx(truth, rel=5 / (2 * 2000) ** 0.5)
    assert float(ses.mean()) < 0.2 * (2 / 200) ** 0.5  # unpaired: sqrt(var a / m + var b / m)
    # The formula on a small case: differences (1, 2, 4) → mean 7/3, sd sqrt(7/3), SE sqrt(7/9).
    mean, se = M.paired_difference(torch.tensor([2.0, 3.0, 5.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert mean == pytest.approx(7 / 3) and se == pytest.approx((7 / 9) ** 0.5)
    with pytest.raises(ValueError, match="shape"):
        M.paired_difference(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="at least 2 inputs"):
        M.paired_difference(torch.zeros(1), torch.zeros(1))


def test_mean_and_standard_error_over_runs():
    from pyro_dlf_bench.metrics import mean_and_standard_error

    mean, se = mean_and_standard_error([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and se == pytest.approx(math.sqrt((16 / 9 + 1 / 9 + 25 / 9) / 2 / 3))
    assert mean_and_standard_error([0.5]) == (0.5, None)
    with pytest.raises(ValueError, match="values"):
        mean_and_standard_error([])


def test_seed_averaged_paired_difference_adds_the_between_seed_variance():
    from pyro_dlf_bench.metrics import paired_difference, seed_averaged_paired_difference

    a = torch.tensor([[3.0, 4.0, 5.0, 6.0], [2.0, 5.0, 5.0, 7.0]])
    b = torch.tensor([[2.0, 4.0, 4.0, 5.0], [2.0, 4.0, 4.0, 5.0]])
    # One seed: the plain paired difference.
    assert seed_averaged_paired_difference(a[:1], b[:1]) == pytest.approx(paired_difference(a[0], b[0]))
    delta, se = seed_averaged_paired_difference(a, b)
    mean_delta, reviews_se = paired_difference(a.mean(0), b.mean(0))
    per_seed = (a - b).mean(1)  # 0.75 and 1.0
    assert delta == pytest.approx(mean_delta)
    assert se == pytest.approx(math.sqrt(reviews_se ** 2 + float(per_seed.var()) / 2))
