"""Tests for pyro_dlf_bench.baselines.dirichlet (Proxy-EnD² ensemble distribution distillation)."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Dirichlet, kl_divergence

from pyro_dlf_bench.baselines.dirichlet import (
    DirichletUncertainty,
    concentrations_from_logits,
    dirichlet_kl,
    dirichlet_uncertainty,
    proxy_dirichlet_targets,
    proxy_end2_loss,
)


def _random_alpha(*shape, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).exp()


def _teachers(n_teachers, batch, classes, *, spread, seed=0, dtype=torch.float64):
    """Teacher log-probs ``(n_teachers, batch, classes)``: a common centre per input plus ``spread`` noise."""
    g = torch.Generator().manual_seed(seed)
    centre = 2.0 * torch.randn(batch, classes, generator=g, dtype=torch.float64)
    noise = torch.randn(n_teachers, batch, classes, generator=g, dtype=torch.float64)
    return torch.log_softmax(centre + spread * noise, dim=-1).to(dtype)


# --------------------------------------------------------------------------- Dirichlet KL


def test_dirichlet_kl_matches_torch():
    a = _random_alpha(64, 5, seed=1)
    b = _random_alpha(64, 5, seed=2)
    expected = kl_divergence(Dirichlet(a), Dirichlet(b))
    torch.testing.assert_close(dirichlet_kl(a, b), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dirichlet_kl(b, a), kl_divergence(Dirichlet(b), Dirichlet(a)), rtol=1e-10, atol=1e-10)


def test_dirichlet_kl_broadcasts_and_keeps_batch_shape():
    a = _random_alpha(2, 3, 4, seed=3)
    b = _random_alpha(4, seed=4)
    out = dirichlet_kl(a, b)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, kl_divergence(Dirichlet(a), Dirichlet(b.expand(2, 3, 4))), rtol=1e-10, atol=1e-10)


def test_dirichlet_kl_zero_at_equal_arguments_and_positive_otherwise():
    a = _random_alpha(32, 6, seed=5)
    assert torch.all(dirichlet_kl(a, a) == 0.0)
    assert torch.all(dirichlet_kl(a, 1.01 * a) > 0.0)


# --------------------------------------------------------------------------- proxy targets


def test_proxy_targets_mean_is_the_ensemble_mean():
    teacher = _teachers(7, 16, 5, spread=0.8, seed=6)
    beta = proxy_dirichlet_targets(teacher)
    assert beta.shape == (16, 5) and beta.dtype == torch.float64
    mean_probs = teacher.exp().mean(0)
    torch.testing.assert_close((beta - 1) / (beta - 1).sum(-1, keepdim=True), mean_probs, rtol=1e-12, atol=1e-14)
    assert torch.all(beta > 1.0)


def test_proxy_precision_is_minkas_estimate():
    teacher = _teachers(4, 8, 3, spread=0.5, seed=7)
    beta = proxy_dirichlet_targets(teacher, offset=0.0)
    # (c - 1) / (2 sum_k pibar_k (log pibar_k - mean_m log pi_k^(m))), written out directly
    pibar = teacher.exp().mean(0)
    denominator = 2 * (pibar * (pibar.log() - teacher.mean(0))).sum(-1)
    torch.testing.assert_close(beta.sum(-1), (3 - 1) / denominator, rtol=1e-10, atol=0)
    torch.testing.assert_close(beta, pibar * ((3 - 1) / denominator)[:, None], rtol=1e-10, atol=0)
    # the offset is added to every class
    torch.testing.assert_close(proxy_dirichlet_targets(teacher, offset=2.5), beta + 2.5, rtol=1e-12, atol=1e-12)


def test_proxy_precision_grows_as_teachers_agree():
    spreads = (2.0, 1.0, 0.5, 0.25, 0.1, 0.01)
    precisions = torch.stack(
        [proxy_dirichlet_targets(_teachers(8, 4, 5, spread=s, seed=8)).sum(-1) - 5 for s in spreads]
    )  # (len(spreads), 4)
    assert torch.all(precisions[1:] > precisions[:-1]), precisions
    # small spreads: the divergence is quadratic in the spread, so the precision scales as 1/spread^2
    ratio = precisions[-1] / precisions[-2]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 100.0), rtol=0.05, atol=0)


def test_proxy_precision_recovers_a_dirichlet_ensemble():
    # Members drawn from Dir(alpha) with alpha_0 = 50: Minka's estimate of the precision is close to 50.
    torch.manual_seed(9)
    alpha = torch.tensor([25.0, 15.0, 10.0], dtype=torch.float64)
    members = Dirichlet(alpha).sample((20000,)).log()[:, None, :]
    beta = proxy_dirichlet_targets(members)[0]
    assert (beta.sum() - 3).item() == pytest.approx(50.0, rel=0.05)
    torch.testing.assert_close((beta - 1) / (beta - 1).sum(), alpha / alpha.sum(), rtol=0, atol=0.01)


def test_proxy_precision_is_capped_when_teachers_agree():
    one = _teachers(1, 3, 4, spread=0.0, seed=10)
    identical = one.expand(5, 3, 4)
    beta = proxy_dirichlet_targets(identical)
    torch.testing.assert_close(beta.sum(-1) - 4, torch.full((3,), (4 - 1) / (2 * 1e-6), dtype=torch.float64))
    beta = proxy_dirichlet_targets(identical, min_divergence=1e-3)
    torch.testing.assert_close(beta.sum(-1) - 4, torch.full((3,), (4 - 1) / (2 * 1e-3), dtype=torch.float64))
    assert torch.all(torch.isfinite(beta))


def test_proxy_targets_float32_keep_precision_of_close_teachers():
    teacher64 = _teachers(6, 5, 4, spread=1e-3, seed=11)
    beta32 = proxy_dirichlet_targets(teacher64.float())
    assert beta32.dtype == torch.float32
    # float32 teacher inputs carry ~1e-7 rounding; the float64 statistics do not add more
    torch.testing.assert_close(beta32.double(), proxy_dirichlet_targets(teacher64), rtol=2e-3, atol=0)


# --------------------------------------------------------------------------- uncertainty


@pytest.mark.parametrize(
    "alpha",
    [[0.5, 2.0, 5.0], [0.1, 0.1, 0.1, 0.1], [30.0, 1.0, 3.0, 0.7, 12.0]],
    ids=["mixed", "sparse", "five-class"],
)
def test_expected_entropy_matches_monte_carlo(alpha):
    alpha = torch.tensor(alpha, dtype=torch.float64)
    n = 40000
    torch.manual_seed(12)
    samples = Dirichlet(alpha).sample((n,))
    entropies = -torch.special.xlogy(samples, samples).sum(-1)  # 0 log 0 = 0 for underflowed samples
    mc_mean = entropies.mean()
    standard_error = entropies.std() / math.sqrt(n)
    closed = dirichlet_uncertainty(alpha).expected_entropy
    assert abs(closed - mc_mean) < 5 * standard_error, (closed, mc_mean, standard_error)


def test_uncertainty_decomposition():
    alpha = _random_alpha(128, 6, seed=13)
    out = dirichlet_uncertainty(alpha)
    assert isinstance(out, DirichletUncertainty)
    mean_probs, total, expected, mutual_information = out  # unpacks like a tuple
    assert mean_probs.shape == (128, 6) and total.shape == expected.shape == mutual_information.shape == (128,)
    torch.testing.assert_close(mean_probs, alpha / alpha.sum(-1, keepdim=True))
    torch.testing.assert_close(total, -(mean_probs * mean_probs.log()).sum(-1))
    torch.testing.assert_close(mutual_information, total - expected)
    assert torch.all(mutual_information > 0)  # strictly: every Dirichlet here has spread
    assert torch.all(expected > 0) and torch.all(total <= math.log(6) + 1e-12)
    # the predictive entropy equals the mean of the member entropies only as the precision grows
    sharp = dirichlet_uncertainty(1e6 * alpha)
    assert torch.all(sharp.mutual_information < 1e-4)
    torch.testing.assert_close(sharp.expected_entropy, sharp.total_entropy, rtol=0, atol=1e-4)


def test_mutual_information_decreases_with_precision():
    base = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    mi = torch.stack([dirichlet_uncertainty(s * base).mutual_information for s in (0.5, 2.0, 10.0, 100.0)])
    assert torch.all(mi[1:] < mi[:-1])


# --------------------------------------------------------------------------- Proxy-EnD² loss


def test_concentrations_from_logits_errors():
    with pytest.raises(ValueError, match="logits contains NaN"):
        concentrations_from_logits(torch.tensor([0.0, math.nan]))
    with pytest.raises(TypeError, match="max_abs_logit must be a real number"):
        concentrations_from_logits(torch.zeros(2), max_abs_logit=None)


def test_concentrations_from_logits_clamps():
    logits = torch.tensor([-50.0, -1.0, 0.0, 3.0, 50.0], dtype=torch.float64)
    alpha = concentrations_from_logits(logits)
    torch.testing.assert_close(alpha, torch.tensor([-20.0, -1.0, 0.0, 3.0, 20.0], dtype=torch.float64).exp())
    torch.testing.assert_close(
        concentrations_from_logits(logits, max_abs_logit=2.0)[[0, -1]], torch.tensor([-2.0, 2.0]).double().exp()
    )


def test_proxy_end2_loss_is_the_reverse_kl_to_the_proxy_target():
    teacher = _teachers(5, 10, 4, spread=0.6, seed=14)
    g = torch.Generator().manual_seed(15)
    logits = torch.randn(10, 4, generator=g, dtype=torch.float64)
    alpha, beta = logits.exp(), proxy_dirichlet_targets(teacher)
    expected = kl_divergence(Dirichlet(alpha), Dirichlet(beta))  # student first: reverse KL
    none = proxy_end2_loss(logits, teacher, reduction="none")
    assert none.shape == (10,)
    torch.testing.assert_close(none, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(proxy_end2_loss(logits, teacher), expected.mean())
    torch.testing.assert_close(proxy_end2_loss(logits, teacher, reduction="sum"), expected.sum())
    scaled = proxy_end2_loss(logits, teacher, reduction="none", scale_by_target_precision=True)
    torch.testing.assert_close(scaled, expected / beta.sum(-1))
    # zero when the student's Dirichlet is the target
    torch.testing.assert_close(
        proxy_end2_loss(beta.log(), teacher, reduction="none"), torch.zeros(10, dtype=torch.float64), rtol=0, atol=1e-9
    )


def test_proxy_end2_loss_keeps_the_logits_dtype():
    teacher = _teachers(3, 4, 3, spread=0.5, seed=16, dtype=torch.float32)
    logits = torch.zeros(4, 3, requires_grad=True)
    loss = proxy_end2_loss(logits, teacher)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad.dtype == torch.float32 and torch.isfinite(logits.grad).all()


def test_proxy_end2_training_decreases_the_loss():
    torch.manual_seed(17)
    g = torch.Generator().manual_seed(17)
    n, d, c = 32, 64, 5
    x = torch.randn(n, d, generator=g)
    centre = 2.0 * torch.randn(n, c, generator=g)
    spread = 0.1 + torch.rand(n, 1, generator=g)  # per-input disagreement: a range of target precisions
    teacher = torch.log_softmax(centre + spread * torch.randn(6, n, c, generator=g), dim=-1)
    model = nn.Linear(d, c)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(200):
        loss = proxy_end2_loss(model(x), teacher)
        assert torch.isfinite(loss)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    final = proxy_end2_loss(model(x), teacher).item()
    assert math.isfinite(final)
    assert final < 0.01 * losses[0], (losses[0], final)
    # the trained student reproduces the target's mean (the ensemble mean, shrunk towards
    # uniform by the offset) and ranks inputs by the ensemble's agreement
    with torch.no_grad():
        alpha = concentrations_from_logits(model(x))
    beta = proxy_dirichlet_targets(teacher)
    mean_probs = dirichlet_uncertainty(alpha).mean_probs
    assert (mean_probs - beta / beta.sum(-1, keepdim=True)).abs().max() < 0.02
    rank_student = alpha.sum(-1).argsort().argsort().double()
    rank_target = beta.sum(-1).argsort().argsort().double()
    assert torch.corrcoef(torch.stack([rank_student, rank_target]))[0, 1] > 0.95


# --------------------------------------------------------------------------- errors


def test_errors_proxy_targets():
    teacher = _teachers(3, 4, 5, spread=0.5)
    with pytest.raises(TypeError, match="teacher_log_probs must be a torch.Tensor"):
        proxy_dirichlet_targets(teacher.numpy())
    with pytest.raises(ValueError, match="at least 2 teachers"):
        proxy_dirichlet_targets(teacher[:1])
    with pytest.raises(ValueError, match="at least 2 dimension"):
        proxy_dirichlet_targets(teacher[0, 0])
    with pytest.raises(ValueError, match="at least 2 classes"):
        proxy_dirichlet_targets(torch.zeros(3, 4, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="must be finite"):
        proxy_dirichlet_targets(torch.tensor([[0.0, -math.inf], [-math.log(2), -math.log(2)]], dtype=torch.float64))
    with pytest.raises(ValueError, match="normalised log-probabilities"):
        proxy_dirichlet_targets(teacher.exp())
    with pytest.raises(ValueError, match="offset must be finite and >= 0"):
        proxy_dirichlet_targets(teacher, offset=-1.0)
    with pytest.raises(ValueError, match="min_divergence must be finite and > 0"):
        proxy_dirichlet_targets(teacher, min_divergence=0.0)
    with pytest.raises(TypeError, match="offset must be a real number"):
        proxy_dirichlet_targets(teacher, offset="1")


def test_errors_dirichlet_kl_and_uncertainty():
    a = _random_alpha(4, 3)
    with pytest.raises(ValueError, match="same number of classes"):
        dirichlet_kl(a, _random_alpha(4, 5))
    with pytest.raises(ValueError, match="do not broadcast"):
        dirichlet_kl(a, _random_alpha(5, 3))
    with pytest.raises(ValueError, match="strictly positive"):
        dirichlet_kl(a, -a)
    with pytest.raises(ValueError, match="strictly positive"):
        dirichlet_uncertainty(torch.tensor([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        dirichlet_uncertainty(torch.ones(3, 1))
    with pytest.raises(TypeError, match="alpha must be a torch.Tensor"):
        dirichlet_uncertainty([1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        dirichlet_uncertainty(torch.ones(3, dtype=torch.long))


def test_errors_proxy_end2_loss():
    teacher = _teachers(3, 4, 5, spread=0.5)
    logits = torch.zeros(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"teacher_log_probs must have shape \(n_teachers, \*student_logits.shape\)"):
        proxy_end2_loss(torch.zeros(4, 6, dtype=torch.float64), teacher)
    with pytest.raises(ValueError, match=r"teacher_log_probs must have shape"):
        proxy_end2_loss(logits, teacher.transpose(0, 1))
    with pytest.raises(ValueError, match="reduction must be one of"):
        proxy_end2_loss(logits, teacher, reduction="batchmean")
    with pytest.raises(TypeError, match="scale_by_target_precision must be a bool"):
        proxy_end2_loss(logits, teacher, scale_by_target_precision=1)
    with pytest.raises(ValueError, match="student_logits contains NaN"):
        proxy_end2_loss(torch.full((4, 5), math.nan, dtype=torch.float64), teacher)
    with pytest.raises(ValueError, match="max_abs_logit must be finite and > 0"):
        proxy_end2_loss(logits, teacher, max_abs_logit=0.0)
    with pytest.raises(TypeError, match="student_logits must be a torch.Tensor"):
        proxy_end2_loss(logits.tolist(), teacher)
