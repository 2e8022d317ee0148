"""Tests for the design sets, the label-free design choice and distill(design=...)."""

import pytest
import torch

from pyro_dlf import distill
from pyro_dlf.design.choice import DESIGN_CANDIDATES, DesignChoice, choose_design, design_points, held_out_score
from pyro_dlf.design.sets import DESIGNS, build_design

QUICK = dict(num_iterations=5, mmd_steps=10, progress=False)


def _teachers(num: int = 5, seed: int = 0):
    """Random tanh networks of a 2-D input: they agree near the data's scale and spread apart beyond it."""
    g = torch.Generator().manual_seed(seed)
    nets = []
    for _ in range(num):
        w, b, v = torch.randn(2, 16, generator=g), torch.randn(16, generator=g), torch.randn(16, generator=g) / 4
        nets.append(lambda t, w=w, b=b, v=v: torch.tanh(t @ w + b) @ v + t[:, 0])
    return nets


def _rows(n: int = 80) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("name, parts", [("given", 1), ("between", 2), ("around", 2), ("beyond", 3)])
def test_build_design_keeps_the_rows_first_and_adds_one_point_per_row_per_part(name, parts):
    x = _rows()
    design = build_design(x, name, generator=torch.Generator().manual_seed(0))
    assert design.shape == (parts * len(x), 2)
    assert torch.equal(design[: len(x)], x)


def test_beyond_reaches_past_the_data_and_between_stays_inside():
    x = _rows(200)
    g = torch.Generator().manual_seed(0)
    centred = lambda t: (t - x.mean(0)) / x.std(0, unbiased=False)  # noqa: E731
    reach = centred(x).norm(dim=1).max()
    beyond = build_design(x, "beyond", reach=1.0, generator=g)[2 * len(x):]
    between = build_design(x, "between", generator=g)[len(x):]
    assert centred(beyond).norm(dim=1).max() > 1.5 * reach
    # Convex combinations never leave the box the rows span.
    assert bool(((between >= x.min(0).values - 1e-6) & (between <= x.max(0).values + 1e-6)).all())


def test_design_points_are_reproducible_from_the_seed():
    x = _rows()
    a, b = design_points(x, "beyond", 0.5, seed=3), design_points(x, "beyond", 0.5, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, design_points(x, "beyond", 0.5, seed=4))


def test_unknown_design_name_is_refused_with_the_names():
    with pytest.raises(ValueError, match="design must be one of"):
        build_design(_rows(), "outside")


def test_choose_design_scores_every_candidate_on_three_held_out_families():
    x, teachers = _rows(), _teachers()
    ensemble = lambda t: torch.stack([net(t) for net in teachers])  # noqa: E731

    def fit(xd, fd, rows, feature):
        return distill(xd, fd, teacher_noise_variances=torch.full((5,), 0.01), design="given", **QUICK)

    choice = choose_design(x, ensemble, fit, seed=0)
    assert [(s["design"], s["reach"], s["distance_feature"]) for s in choice.scores] == list(DESIGN_CANDIDATES)
    best = min(choice.scores, key=lambda s: s["score"])
    assert (choice.design, choice.reach, choice.distance_feature) == (best["design"], best["reach"], best["distance_feature"])
    for s in choice.scores:
        assert s["score"] == pytest.approx((s["in_range"] + s["around"] + s["beyond"]) / 3)


def test_held_out_score_is_the_per_value_negative_log_marginal_likelihood():
    x, teachers = _rows(), _teachers()
    f = torch.stack([net(x) for net in teachers])
    student = distill(x, f, teacher_noise_variances=torch.full((5,), 0.01), **QUICK)
    score = held_out_score(student, {"in_range": x}, {"in_range": f})
    direct = -student.dlf.log_marginal_likelihood(x, f).sum() / f.numel()
    assert score["in_range"] == pytest.approx(float(direct), rel=1e-6)
    assert score["score"] == score["in_range"]


def test_distill_auto_design_with_callable_teachers_records_the_choice():
    x = _rows()
    student = distill(x, _teachers(), teacher_noise_variances=torch.full((5,), 0.01), **QUICK)
    choice = student.design_choice
    assert isinstance(choice, DesignChoice) and len(choice.scores) == len(DESIGN_CANDIDATES)
    assert choice.num_data_points == len(x)
    assert choice.num_design_points == len(choice.points(x))
    # The distance feature is chosen with the design, and never for the rows alone.
    assert choice.distance_feature == (student.dlf.distance_anchors is not None)
    assert not (choice.design == "given" and choice.distance_feature)


@pytest.mark.parametrize("feature", [True, False])
def test_a_fixed_distance_feature_is_kept_by_every_candidate(feature):
    student = distill(_rows(), _teachers(), teacher_noise_variances=torch.full((5,), 0.01), distance_feature=feature, **QUICK)
    assert {s["distance_feature"] for s in student.design_choice.scores} == {feature}
    assert [s["design"] for s in student.design_choice.scores] == ["given", "around", "beyond"]
    assert (student.dlf.distance_anchors is not None) == feature


def test_distill_with_teacher_values_keeps_the_given_points_and_says_why():
    x, teachers = _rows(), _teachers()
    f = torch.stack([net(x) for net in teachers])
    student = distill(x, f, teacher_noise_variances=torch.full((5,), 0.01), **QUICK)
    assert student.design_choice.design == "given"
    assert "callables" in student.design_choice.reason
    assert student.dlf.distance_anchors is None


def test_named_design_with_teacher_values_is_refused_with_the_fix():
    x, teachers = _rows(), _teachers()
    f = torch.stack([net(x) for net in teachers])
    with pytest.raises(ValueError, match=r"design='beyond' places points off x_design.*pass design='given'"):
        distill(x, f, teacher_noise_variances=torch.full((5,), 0.01), design="beyond", **QUICK)


def test_one_callable_for_the_whole_ensemble_equals_the_list_of_callables():
    x, teachers = _rows(), _teachers()
    ensemble = lambda t: torch.stack([net(t) for net in teachers])  # noqa: E731
    a = distill(x, teachers, teacher_noise_variances=torch.full((5,), 0.01), design="around", **QUICK)
    b = distill(x, ensemble, teacher_noise_variances=torch.full((5,), 0.01), design="around", **QUICK)
    probe = torch.tensor([[0.0, 0.0], [3.0, -3.0]])
    assert torch.allclose(a.dlf.loading(probe), b.dlf.loading(probe))


def test_callable_design_adds_its_points():
    x = _rows()
    extra = lambda rows, generator: rows + 0.1  # noqa: E731
    student = distill(x, _teachers(), teacher_noise_variances=torch.full((5,), 0.01), design=extra, **QUICK)
    assert student.design_choice.design == "custom"
    assert student.design_choice.num_design_points == 2 * len(x)
    with pytest.raises(ValueError, match="callable design is not recorded"):
        student.design_choice.points(x)


@pytest.mark.parametrize("bad, match", [("far", "design must be one of"), (3, "design must be one of")])
def test_bad_design_option_names_the_argument(bad, match):
    with pytest.raises(ValueError, match=match):
        distill(_rows(), _teachers(), teacher_noise_variances=torch.full((5,), 0.01), design=bad, **QUICK)


def test_bad_distance_feature_option_names_the_argument():
    with pytest.raises(ValueError, match="distance_feature must be 'auto', True or False"):
        distill(_rows(), _teachers(), teacher_noise_variances=torch.full((5,), 0.01), distance_feature="yes", **QUICK)


def test_ensemble_callable_with_a_wrong_shape_is_named():
    bad = lambda t: t[:, 0]  # noqa: E731 - one row, not (n, b)
    with pytest.raises(ValueError, match=r"the ensemble callable returned \((\d+),\) of dtype torch.float32 for a batch of \1 inputs"):
        distill(_rows(), bad, teacher_noise_variances=torch.full((5,), 0.01), **QUICK)


def test_the_named_designs_are_the_documented_ones():
    assert DESIGNS == ("given", "between", "around", "beyond")


def test_too_few_rows_for_the_choice_keep_the_given_points_and_say_why():
    student = distill(_rows(12), _teachers(), teacher_noise_variances=torch.full((5,), 0.01), **QUICK)
    assert student.design_choice.design == "given" and "too few to hold some out" in student.design_choice.reason


def test_teachers_in_a_module_list_are_a_list_of_teachers():
    class Net(torch.nn.Module):
        def __init__(self, seed):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            torch.nn.init.normal_(self.layer.weight, generator=torch.Generator().manual_seed(seed))

        def forward(self, t):
            return torch.tanh(self.layer(t)).squeeze(-1)

    nets = torch.nn.ModuleList(Net(i) for i in range(4))
    student = distill(_rows(), nets, teacher_noise_variances=torch.full((4,), 0.01), design="around", **QUICK)
    assert student.design_choice.num_design_points == 2 * len(_rows())


def test_classification_choice_scores_centred_logits():
    """A teacher's offset along the all-ones direction moves no probability; the centred student must not be scored on it."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 2, 3, generator=g)
    shift = torch.randn(4, 1, 1, generator=g) * 50  # large per-teacher offsets on every class
    ensemble = lambda t: torch.einsum("nd,kdc->knc", t, w) + shift  # noqa: E731
    student = distill(_rows(), ensemble, **QUICK)
    assert student.centered_logits
    # Centred, the offsets vanish: every score is a modest number of nats per value, not ~50² / 2σ².
    assert all(abs(s["score"]) < 50 for s in student.design_choice.scores)


def test_a_callable_design_of_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match=r"design: the callable returned points \(80, 3\)"):
        distill(_rows(), _teachers(), teacher_noise_variances=torch.full((5,), 0.01),
                design=lambda rows, generator: torch.zeros(len(rows), 3), **QUICK)


def test_distance_feature_with_a_custom_body_is_refused_by_name():
    with pytest.raises(ValueError, match="distance_feature=True measures distances between"):
        distill(_rows(), _teachers(), teacher_noise_variances=torch.full((5,), 0.01), distance_feature=True,
                body=torch.nn.Linear(2, 4), body_features=4, **QUICK)


@pytest.mark.parametrize("bad, match", [
    (lambda t: torch.ones(3, len(t), dtype=torch.int64), "of dtype torch.int64"),
    (lambda t: torch.ones(3 if len(t) > 20 else 4, len(t)), r"after \(3, \d+\) on an earlier batch"),
])
def test_an_ensemble_callable_with_bad_batches_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        distill(_rows(), bad, teacher_noise_variances=torch.full((3,), 0.01), teacher_batch_size=32, **QUICK)
