"""Choosing the student body by held-out marginal likelihood (pyro_dlf.selection, distill(hidden=...))."""

import math

import pytest
import torch

import pyro_dlf
from pyro_dlf.selection import BODY_FAMILY, TRAINING_FAMILY, select_hidden, split_design

CANDIDATES = [(4,), (64, 64)]
FAST = dict(num_iterations=200, mmd_steps=300, progress=False, activation="Tanh", lr=1e-2, batch_size=64)


def _teachers(rough: bool, n=20, m=300, seed=0):
    """Teachers f_i = μ(x) + a_i · 0.3 cos(x/2) + 0.1 ε_ij on x ∈ [−2, 2]: μ smooth (0.5 tanh x, which
    one tanh unit represents) or rough (sin 6x + ½ sin 11x)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-2, 2, m).unsqueeze(-1)
    t = x.squeeze(-1)
    mean = torch.sin(6 * t) + 0.5 * torch.sin(11 * t) if rough else 0.5 * torch.tanh(t)
    f = mean + torch.randn(n, 1, generator=g) * 0.3 * torch.cos(t / 2) + 0.1 * torch.randn(n, m, generator=g)
    return x, f, torch.linspace(0.009, 0.011, n)


@pytest.mark.parametrize("rough, expected", [(True, (64, 64)), (False, (4,))])
def test_selection_picks_the_body_the_teachers_need(rough, expected):
    x, f, v = _teachers(rough)
    student = pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, hidden=CANDIDATES, seed=0, **FAST)
    sel = student.body_selection
    print(f"\nrough={rough}: validation NLL per scalar {dict(zip(sel.candidates, sel.validation_nll))}, SE {sel.standard_error}")
    assert sel.chosen == expected
    assert student.dlf.hidden == expected  # refitted on all design points with the chosen body
    assert sel.validation_points == 60 and len(sel.parameters) == 2 and sel.parameters[0] < sel.parameters[1]


def test_one_standard_error_rule():
    """A larger body must beat the smaller by more than one paired standard error over teachers."""
    x = torch.zeros(10, 1)
    f = torch.zeros(4, 10)
    # Per-teacher validation log-likelihoods of two candidates; the second is better on average.
    table = {(1,): torch.tensor([0.0, 0.1, -0.1, 0.0]), (2,): torch.tensor([0.05, 0.15, -0.05, 0.05])}

    class Fake(torch.nn.Module):
        def __init__(self, widths):
            super().__init__()
            self.widths = widths
            self.w = torch.nn.Parameter(torch.zeros(widths[0]))

    select = lambda t: select_hidden(x, f, list(t), lambda xs, fs, h, o, i, length: Fake(h), lambda s, xs, fs, o: t[s.widths])  # noqa: E731
    # Differences are exactly 0.05 for every teacher: SE 0, the bigger body is better: chosen.
    assert select(table).chosen == (2,)
    noisy = {(1,): torch.tensor([0.0, 0.3, -0.3, 0.0]), (2,): torch.tensor([0.05, 0.15, -0.05, 0.05])}
    # Mean difference 0.05 with paired SE √(var([0.05, −0.15, 0.25, 0.05]) / 4) ≈ 0.082: within one SE.
    sel = select(noisy)
    assert sel.chosen == (1,)
    diffs = torch.tensor([0.05, -0.15, 0.25, 0.05], dtype=torch.float64)
    assert sel.standard_error[0] == pytest.approx(float(diffs.std() / math.sqrt(4)))


def _memorizing_teachers(rough: bool, memorized: float, n=20, m=300, seed=0):
    """Teachers as in :func:`_teachers` plus a value ``memorized · e_j`` shared by every teacher at design
    point ``j``: the label noise an ensemble trained on the same rows has partly memorized there."""
    x, f, v = _teachers(rough, n, m, seed)
    g = torch.Generator().manual_seed(seed + 1)
    return x, f + memorized * torch.randn(m, generator=g), v


def test_training_length_selection_stops_early_on_memorized_values_and_trains_fully_on_a_rough_mean():
    # A rough mean needs the whole schedule: the held-out score says so, by far more than one SE.
    x, f, v = _memorizing_teachers(rough=True, memorized=0.0)
    student = pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, hidden=(64, 64), training_length="auto", seed=0, **FAST)
    sel = student.body_selection
    print(f"\nrough: lengths {sel.lengths}, validation NLL {sel.validation_nll}, SE {sel.standard_error}")
    assert sel.lengths == list(TRAINING_FAMILY) and sel.candidates == [(64, 64)] * 3  # one body: lengths only
    assert sel.chosen_length == 1.0 and len(student.history) == FAST["num_iterations"] + 1
    # A smooth mean under shared memorized noise: a long fit follows the noise, held-out points see it.
    x, f, v = _memorizing_teachers(rough=False, memorized=0.5)
    student = pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, hidden=(64, 64), training_length="auto", seed=0, **FAST)
    sel = student.body_selection
    print(f"memorized: lengths {sel.lengths}, validation NLL {sel.validation_nll}, SE {sel.standard_error}")
    assert sel.chosen_length < 1.0
    assert sel.validation_nll[sel.lengths.index(sel.chosen_length)] < sel.validation_nll[0] - sel.standard_error[0]
    # The refit ran the shortened schedule, and its mean is nearer the teachers' smooth function than the full fit's.
    assert len(student.history) == max(1, round(sel.chosen_length * FAST["num_iterations"])) + 1
    full = pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, hidden=(64, 64), seed=0, **FAST)
    truth = 0.5 * torch.tanh(x.squeeze(-1))
    with torch.no_grad():
        error_short = float((student.dlf.mean(x) - truth).pow(2).mean().sqrt())
        error_full = float((full.dlf.mean(x) - truth).pow(2).mean().sqrt())
    print(f"mean error: chosen length {error_short:.4f}, full schedule {error_full:.4f}")
    assert error_short < error_full


def test_the_rule_prefers_the_shorter_schedule_within_one_standard_error():
    x, f = torch.zeros(10, 1), torch.zeros(4, 10)

    class Fake(torch.nn.Module):
        def __init__(self, widths, length):
            super().__init__()
            self.key = (widths, length)
            self.w = torch.nn.Parameter(torch.zeros(widths[0]))

    def select(table):
        return select_hidden(x, f, [(1,), (2,)], lambda xs, fs, h, o, i, length: Fake(h, length),
                             lambda s, xs, fs, o: table[s.key], lengths=(1.0, 0.5))

    same = torch.tensor([0.0, 0.1, -0.1, 0.0])
    # Equal scores everywhere: the smallest body, then the shortest schedule.
    sel = select({(b, ell): same for b in [(1,), (2,)] for ell in (1.0, 0.5)})
    assert (sel.chosen, sel.chosen_length) == ((1,), 0.5) and sel.lengths == [1.0, 0.5, 1.0, 0.5]
    # The full schedule of the small body better by 0.05 on every teacher (SE 0): chosen over the short one.
    table = {(b, ell): same for b in [(1,), (2,)] for ell in (1.0, 0.5)}
    table[((1,), 1.0)] = same + 0.05
    sel = select(table)
    assert (sel.chosen, sel.chosen_length) == ((1,), 1.0)
    assert sel.as_dict()["chosen_length"] == 1.0 and sel.as_dict()["lengths"] == [1.0, 0.5, 1.0, 0.5]


@pytest.mark.parametrize("value", [0, 0.0, 1.5, -0.2, "long", True, None])
def test_bad_training_length(value):
    x, f, v = _teachers(False, m=30)
    with pytest.raises(ValueError, match="training_length must be a fraction in \\(0, 1\\]"):
        pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, training_length=value, **FAST)


def test_training_length_fraction_shortens_both_phases_and_auto_needs_the_mlp_body():
    x, f, v = _teachers(False, m=30)
    student = pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, training_length=0.35, seed=0, **FAST)
    assert len(student.history) == round(0.35 * FAST["num_iterations"]) + 1 and student.body_selection is None
    with pytest.raises(ValueError, match="training_length='auto'.*body="):
        pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, training_length="auto",
                         body=torch.nn.Linear(1, 3), body_features=3, **FAST)


def test_split_and_bad_arguments():
    fit, val = split_design(10, 0.2, seed=3)
    assert len(val) == 2 and len(fit) == 8 and set(fit.tolist()).isdisjoint(val.tolist())
    assert torch.equal(split_design(10, 0.2, seed=3)[1], val)  # seeded
    with pytest.raises(ValueError, match="validation_fraction"):
        split_design(10, 1.5, seed=0)
    with pytest.raises(ValueError, match="too few to hold out"):
        split_design(2, 0.5, seed=0)
    x, f, v = _teachers(False, m=30)
    with pytest.raises(ValueError, match="hidden must be widths"):
        pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, hidden="best", **FAST)
    with pytest.raises(ValueError, match="validation_fraction"):
        pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, hidden="auto", validation_fraction=0.0, **FAST)
    with pytest.raises(ValueError, match="default MLP body"):
        pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, hidden=CANDIDATES, body=torch.nn.Linear(1, 3),
                         body_features=3, **FAST)
    assert BODY_FAMILY == ((50,), (100,), (50, 50), (100, 100))


def test_predictive_log_score_is_the_expected_log_density_of_the_teachers_noisy_outputs():
    """Against the closed form for one Gaussian component: E_{y~N(f, s²)} log N(y; m, v)
    = −½ log(2πv) − ((f − m)² + s²) / (2v); and a two-component mixture against Monte Carlo."""
    from pyro_dlf.selection import predictive_log_score

    class Fixed:
        def __init__(self, means, variances):
            self.means, self.variances = means, variances

        def predictive_mixture(self, x):
            return self.means, self.variances

    f = torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.5, 1.0]], dtype=torch.float64)
    noise = torch.tensor([0.2, 1.5], dtype=torch.float64)
    m, v = torch.tensor([[0.1, -0.5, 1.0]]), torch.tensor([[0.7, 1.2, 2.0]])
    got = predictive_log_score(Fixed(m, v), None, f, noise)
    expected = (-0.5 * torch.log(2 * math.pi * v.double()) - ((f - m) ** 2 + noise[:, None]) / (2 * v.double())).mean(1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # Many identical components: the same density, scored one (teacher, point) pair per memory chunk.
    many = 1 << 19
    got = predictive_log_score(Fixed(m.expand(many, -1), v.expand(many, -1)), None, f, noise)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # A mixture (no closed form): Monte Carlo with 400k draws, 5 standard errors.
    means, variances = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.tensor([[0.5, 0.3], [1.0, 2.0]])
    got = predictive_log_score(Fixed(means, variances), None, f[:, :2], noise)
    g = torch.Generator().manual_seed(0)
    y = f[:, :2].unsqueeze(-1) + noise.sqrt()[:, None, None] * torch.randn(2, 2, 400_000, generator=g, dtype=torch.float64)
    comp = torch.distributions.Normal(means.double()[:, None, :, None], variances.double().sqrt()[:, None, :, None])
    log_density = comp.log_prob(y.unsqueeze(0)).logsumexp(0) - math.log(2)
    mc = log_density.mean(-1).mean(1)
    se = (log_density.mean(1).std(-1) / math.sqrt(400_000))
    assert ((got - mc).abs() < 5 * se).all(), (got, mc, se)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    partial = predictive_log_score(Fixed(m, v), None, f, noise, observed=mask)
    assert math.isnan(float(partial[1])) and float(partial[0]) == pytest.approx(float(expected.new_tensor(
        [(-0.5 * math.log(2 * math.pi * float(v[0, j])) - ((float(f[0, j] - m[0, j])) ** 2 + 0.2) / (2 * float(v[0, j]))) for j in (0, 2)]).mean()))


def test_a_separate_loading_body_reaches_every_candidate_and_carries_the_teachers_spread():
    """hidden= candidates each get the loading body; the fitted ‖Φ(x)‖ follows the teachers' factor 0.3 cos(x/2).

    Twenty teachers estimate the factor's variance with relative standard error √(2/19) ≈ 0.32, so the
    fitted epistemic sd must lie within a factor 2 of the truth (variance within 4×), ~4 standard errors."""
    x, f, v = _teachers(rough=False)
    student = pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, hidden=CANDIDATES, loading_hidden=(8,), seed=0, **FAST)
    from pyro_dlf.models import DeepLatentFactor

    expected = [sum(p.numel() for p in DeepLatentFactor(1, 1, c, loading_hidden=(8,)).parameters()) for c in CANDIDATES]
    assert student.body_selection.parameters == expected and student.dlf.loading_hidden == (8,)
    truth = 0.3 * torch.cos(x.squeeze(-1) / 2)
    sd = student.predict(x, 1).epistemic_variance.sqrt()
    assert 0.5 < float(sd.mean() / truth.mean()) < 2.0
    with pytest.raises(ValueError, match="loading_hidden: a separate loading body works with the default MLP body"):
        pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, body=torch.nn.Linear(1, 4), body_features=4,
                         loading_hidden=(8,), **FAST)


def test_selection_needs_enough_design_points_for_its_held_out_part():
    """5 held-out and 5 fitting points at least: with validation_fraction=0.2 that is 23 points (round(0.2·23) = 5)."""
    from pyro_dlf.selection import minimum_design_points

    assert [minimum_design_points(v) for v in (0.2, 0.5, 0.1)] == [23, 10, 46]
    x, f, v = _teachers(False, m=22)
    with pytest.raises(ValueError, match=r"hidden='auto' compares fits on held-out design points and needs at least 23 of them with "
                                         r"validation_fraction=0.2 \(5 held out, 18 to fit\); x_design has 22: pass one body"):
        pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, hidden="auto", **FAST)
    with pytest.raises(ValueError, match=r"hidden=\[\(4,\), \(8,\)\] compares .* x_design has 3"):
        pyro_dlf.distill(x[:3], f[:, :3], num_factors=1, teacher_noise_variances=v, hidden=[(4,), (8,)], **FAST)
    with pytest.raises(ValueError, match=r"training_length='auto' compares .* needs at least 10 .* pass a fraction"):
        pyro_dlf.distill(x[:9], f[:, :9], num_factors=1, teacher_noise_variances=v, training_length="auto", validation_fraction=0.5, **FAST)


def _two_candidates(**options):
    x, f, v = _teachers(False, m=30)
    return pyro_dlf.distill(x, f, num_factors=1, teacher_noise_variances=v, hidden=[(4,), (8,)], seed=0,
                            **{**FAST, "num_iterations": 2, "mmd_steps": 2, **options})


def test_body_selection_shows_a_bar_over_its_candidates_unless_tqdm_disable(capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    _two_candidates(progress=True)
    shown = capsys.readouterr().err
    assert "body selection:   0%|          | 0/2" in shown  # one tick per candidate fit
    monkeypatch.setenv("TQDM_DISABLE", "1")
    _two_candidates(progress=True)
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("TQDM_DISABLE")
    _two_candidates(progress=False)
    assert capsys.readouterr().err == ""
