"""The fixed rules of the classification predictive (mathematics §6.1)."""
import math

import pytest
import torch

from pyro_dlf import Student
from pyro_dlf_bench.metrics import entropy_decomposition
from pyro_dlf import quadrature
from pyro_dlf.quadrature import gauss_hermite_rule, gaussian_rule, integrate_softmax, monte_carlo_rule, softmax_summary, sobol_rule
from synthetic import random_dlf


def _moment(rule, powers):
    """The rule's E u^a and the float error bound of the sum (1e-14 of E|u^a|)."""
    terms = rule.weights * rule.nodes.pow(torch.tensor(powers, dtype=torch.float64)).prod(-1)
    return float(terms.sum()), 1e-14 * float(terms.abs().sum())


@pytest.mark.parametrize("dim,points", [(1, 7), (2, 5), (4, 3)])
def test_gauss_hermite_rule_is_exact_to_its_degree(dim, points):
    """E u^a for every multi-index with each a_j ≤ 2k − 1: Gaussian moments ∏ (a_j − 1)!! (0 for odd a_j)."""
    rule = gauss_hermite_rule(dim, points)
    assert rule.num_nodes == points ** dim and (rule.weights > 0).all()
    for powers in [(a,) + (0,) * (dim - 1) for a in range(2 * points)] + [((2,) * dim), ((4, 2) + (0,) * (dim - 2))[:dim]]:
        exact = math.prod(0 if a % 2 else math.prod(range(a - 1, 0, -2)) for a in powers)
        moment, rounding = _moment(rule, powers)
        assert moment == pytest.approx(exact, rel=0, abs=rounding)


def test_sobol_rule_has_mean_zero_and_equal_positive_weights():
    rule = sobol_rule(6, 256)
    assert rule.num_nodes == 256
    torch.testing.assert_close(rule.nodes.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-15, rtol=0)
    assert torch.equal(rule.weights, torch.full((256,), 1 / 256, dtype=torch.float64))


def test_monte_carlo_rule_is_its_seeds_draws_with_equal_weights():
    rule = monte_carlo_rule(3, 100, seed=7)
    expected = torch.randn(100, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(rule.nodes, expected)
    assert torch.equal(rule.weights, torch.full((100,), 1 / 100, dtype=torch.float64))
    assert rule.name == "100 draws (seed 7)"


def test_the_budget_picks_the_richest_product_rule():
    assert gaussian_rule(4).name == "Gauss–Hermite 4^4"
    assert gaussian_rule(5).name == "Gauss–Hermite 3^5"
    assert gaussian_rule(1).name == "Gauss–Hermite 32^1"
    assert gaussian_rule(6).name == "mirrored Sobol 512"  # 3^6 = 729 > 512
    assert gaussian_rule(6, max_nodes=729).name == "Gauss–Hermite 3^6"
    assert gaussian_rule(3, max_nodes=63).name == "Gauss–Hermite 3^3"


def test_softmax_summary_is_the_entropy_decomposition():
    """Equal weights: the same numbers as averaging S softmax draws (float64 arithmetic)."""
    logits = 3 * torch.randn(5, 4, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probs, total, expected, mi = softmax_summary(logits, torch.full((40,), 1 / 40, dtype=torch.float64))
    draws = logits.permute(2, 0, 1).softmax(-1)
    torch.testing.assert_close(probs, draws.mean(0), atol=1e-14, rtol=0)
    for ours, theirs in zip((total, expected, mi), entropy_decomposition(draws)):
        torch.testing.assert_close(ours, theirs, atol=1e-13, rtol=0)



def test_softmax_summary_leaves_its_logits_alone():
    logits = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kept = logits.clone()
    softmax_summary(logits.permute(0, 2, 1), torch.full((7,), 1 / 7, dtype=torch.float64))  # a view, as predict passes
    assert torch.equal(logits, kept)


def test_integrate_softmax_is_the_summary_of_the_logits_at_the_nodes(monkeypatch):
    """Chunks that do not divide the inputs and buffers reused across them: the same numbers as the
    summary of every node's logits at once (float64; only the order of the sums differs)."""
    monkeypatch.setattr(quadrature, "_CHUNK_ELEMENTS", 3 * 4 * 9)  # three inputs per chunk, 7 inputs
    generator = torch.Generator().manual_seed(3)
    mean = 4 * torch.randn(7, 4, generator=generator, dtype=torch.float64)
    factor = 2 * torch.randn(7, 4, 2, generator=generator, dtype=torch.float64)
    rule = gauss_hermite_rule(2, 3)
    logits = mean.unsqueeze(-1) + factor @ rule.nodes.T  # (m, c, K)
    for ours, theirs in zip(integrate_softmax(mean, factor, rule), softmax_summary(logits, rule.weights)):
        torch.testing.assert_close(ours, theirs, atol=1e-14, rtol=0)


def _students():
    separable = Student(random_dlf(num_outputs=3), "classification")
    full = Student(random_dlf(num_outputs="full"), "classification")
    nugget = Student(random_dlf(num_outputs="full"), "classification", include_nugget=True)
    return {"separable": separable, "full": full, "full with nugget": nugget}


@pytest.mark.parametrize("kind", ["separable", "full", "full with nugget"])
def test_the_rule_is_as_accurate_as_the_thousand_draws_it_replaces(kind):
    """Default rule against S = 200,000 draws (float64): every probability and entropy within one
    standard error of a 1,000-draw estimate (what the rule replaces) plus 5 standard errors of the
    reference, both from the draws' own spread. The random students have logit spreads of several
    units, where the softmax is nearly a step and no low-order rule is exact."""
    student = _students()[kind]
    x = 2 * torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rule = student.predict(x)
    torch.manual_seed(0)
    S = 200_000
    logits = student.predict(x, S, return_samples=True).logit_samples  # (S, m, c)
    p = logits.softmax(-1)
    h = -(p * logits.log_softmax(-1)).sum(-1)
    pbar = p.mean(0)
    total = ((p - pbar) * -(pbar.log() + 1)).sum(-1)  # delta method: the total entropy's draw-to-draw term

    def within(ours, reference, spread):
        sd = spread.std(0)
        return ((ours - reference).abs() <= sd / math.sqrt(1000) + 5 * sd / math.sqrt(S) + 1e-12).all()

    assert within(rule.probs, pbar, p)
    assert within(rule.expected_entropy, h.mean(0), h)
    assert within(rule.total_entropy, entropy_decomposition(p)[0], total)


def test_a_larger_budget_converges_to_the_draws():
    """16^3 Gauss–Hermite nodes on the separable student: within 5 standard errors of 200,000 draws."""
    student = _students()["separable"]
    x = 2 * torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rule = student.predict(x, max_nodes=16 ** 3)
    torch.manual_seed(0)
    S = 200_000
    p = student.predict(x, S, return_samples=True).logit_samples.softmax(-1)
    assert ((rule.probs - p.mean(0)).abs() <= 5 * p.std(0) / math.sqrt(S)).all()


def test_draws_are_used_only_when_asked():
    student = _students()["full"]
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.manual_seed(0)
    a = student.predict(x)
    torch.manual_seed(1)
    b = student.predict(x)
    assert torch.equal(a.probs, b.probs) and a.logit_samples is None  # deterministic: no draws
    torch.manual_seed(0)
    c = student.predict(x, 50)
    torch.manual_seed(0)
    d = student.predict(x, 50, return_samples=True)
    torch.testing.assert_close(c.probs, d.probs, atol=1e-15, rtol=0)  # the same draws either way
    assert d.logit_samples.shape == (50, 4, 3)
    assert student.predict(x, return_samples=True).logit_samples.shape == (1000, 4, 3)


def test_the_rule_is_named_and_regression_has_none():
    assert Student(random_dlf(num_outputs="full"), "classification").integration_rule().name == "Gauss–Hermite 8^3"
    assert Student(random_dlf(num_outputs=3), "classification").integration_rule(27).name == "Gauss–Hermite 3^3"
    with pytest.raises(ValueError, match="max_nodes must be a positive int"):
        Student(random_dlf(num_outputs=3), "classification").integration_rule(0)
    with pytest.raises(ValueError, match="integration_rule: regression summaries are closed form"):
        Student(random_dlf(), "regression", 3.0, 1.0).integration_rule()
