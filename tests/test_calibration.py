"""Spread calibration from the teachers' out-of-sample values (pyro_dlf.calibration, distill(held_out=...))."""

import io

import numpy as np
import pytest
import torch

from pyro_dlf import Student, distill
from pyro_dlf.calibration import InfeasibleCalibration, calibrate_spread, out_of_sample_spread
from tests.synthetic import synthetic_teachers


def _held_out(n, m, share, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, m, generator=g) < share


def test_out_of_sample_spread_is_the_pooled_within_point_variance():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(7, 9, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 9, dtype=torch.float64)
    held = _held_out(7, 9, 0.5, 1)
    held[:, 0] = False
    held[0, 0] = True  # one value only: no spread at point 0
    f[~held] = float("nan")  # values outside the mask are never read
    spread, weight = out_of_sample_spread(f, held)
    squares, dof = 0.0, 0
    for j in range(9):
        values = f[held[:, j], j].numpy()
        if len(values) >= 2:
            squares += np.var(values, ddof=1) * (len(values) - 1)
            dof += len(values) - 1
        assert weight[j] == max(len(values) - 1, 0)
    assert spread == pytest.approx(squares / dof, rel=1e-12)


def _fit(f, x, held_out=None, **kwargs):
    noise = torch.linspace(0.008, 0.012, f.shape[0])
    options = dict(num_factors=3, teacher_noise_variances=noise, hidden=(16,), num_iterations=40, mmd_steps=100,
                   progress=False, seed=0)
    options.update(kwargs)
    return distill(x, f, held_out=held_out, **options)


def _weighted_epistemic(student, x, weight):
    variance = student.predict(x, 1, return_samples=False).epistemic_variance.double()
    return float((weight * variance).sum() / weight.sum())


def test_calibrated_loadings_report_the_teachers_out_of_sample_spread():
    # Teachers agree more where they were trained: their in-sample deviations are halved.
    truth, x, f = synthetic_teachers(400, num_points=60, seed=3)
    held = _held_out(400, 60, 0.25, 4)
    mean = f.mean(0)
    f_seen = torch.where(held, f, mean + 0.5 * (f - mean))
    plain = _fit(f_seen, x)
    calibrated = _fit(f_seen, x, held_out=held)
    record = calibrated.spread_calibration
    spread, weight = out_of_sample_spread(f_seen, held)
    assert plain.spread_calibration is None
    assert record.teacher_spread == pytest.approx(spread, rel=1e-12)
    assert record.degrees_of_freedom == int(weight.sum()) and record.points == 60
    # The identity the rescaling enforces, up to float32 rounding of the weights and the forward pass.
    assert _weighted_epistemic(calibrated, x, weight) == pytest.approx(spread, rel=1e-5)
    # The same fit otherwise: the mean is untouched, the loadings only rescaled.
    torch.testing.assert_close(calibrated.dlf.mean(x), plain.dlf.mean(x))
    torch.testing.assert_close(calibrated.dlf.loading(x), plain.dlf.loading(x) * record.scale ** 0.5, rtol=1e-5, atol=1e-6)
    # Against the population: the teachers' variance at new inputs is ‖Φ*(x)‖² + σ². Its estimate
    # from 400 teachers' codes has a relative standard error of about sqrt(2/400) = 7 %;
    # 25 % is 3.5 of them. The in-sample fit reports about a quarter to a half of it.
    with torch.no_grad():
        grid = torch.linspace(-2, 2, 201).unsqueeze(-1)
        population = float((truth.loading(grid).pow(2).sum(-1) + truth.noise_variance).mean())
        fresh = float(calibrated.predict(grid, 1, return_samples=False).epistemic_variance.mean())
        before = float(plain.predict(grid, 1, return_samples=False).epistemic_variance.mean())
    assert fresh == pytest.approx(population, rel=0.25)
    assert before < 0.6 * population


def test_calibration_with_the_nugget_matches_the_spread_with_it():
    truth, x, f = synthetic_teachers(60, num_points=40, seed=5)
    held = _held_out(60, 40, 0.3, 6)
    student = _fit(f, x, held_out=held, include_nugget=True)
    spread, weight = out_of_sample_spread(f, held)
    # With the nugget the reported epistemic variance is ‖Φ‖² + σ_f².
    assert _weighted_epistemic(student, x, weight) == pytest.approx(spread, rel=1e-5)


def test_calibration_survives_body_selection_and_saving(tmp_path):
    truth, x, f = synthetic_teachers(30, num_points=40, seed=7)
    held = _held_out(30, 40, 0.3, 8)
    student = _fit(f, x, held_out=held, hidden=[(8,), (16,)], num_iterations=15, mmd_steps=30)
    spread, weight = out_of_sample_spread(f, held)
    assert student.body_selection is not None
    assert _weighted_epistemic(student, x, weight) == pytest.approx(spread, rel=1e-5)
    buffer = io.BytesIO()
    student.save(buffer)
    buffer.seek(0)
    loaded = Student.load(buffer)
    torch.testing.assert_close(loaded.predict(x, 1, return_samples=False).epistemic_variance,
                               student.predict(x, 1, return_samples=False).epistemic_variance)


@pytest.mark.parametrize("held, message", [
    (torch.ones(10, 20), "boolean"),
    (torch.ones(10, 19, dtype=torch.bool), r"shape \(10, 20\)"),
    (torch.eye(10, 20, dtype=torch.bool), "two or more teachers"),
])
def test_bad_held_out_masks_are_named(held, message):
    truth, x, f = synthetic_teachers(10, num_points=20, seed=1)
    with pytest.raises((TypeError, ValueError), match=f"held_out.*{message}|{message}.*held_out|held_out must be a {message}"):
        _fit(f, x, held_out=held, num_iterations=2, mmd_steps=0)


def test_held_out_is_refused_for_classification_and_inconsistent_masks():
    truth, x, f = synthetic_teachers(10, num_points=20, seed=1)
    held = _held_out(10, 20, 0.5, 2)
    logits = torch.randn(10, 20, 3)
    with pytest.raises(ValueError, match="held_out: spread calibration is for teachers with one regression output"):
        distill(x, logits, num_factors=2, held_out=held, num_iterations=1, mmd_steps=0, progress=False)
    observed = ~held
    observed[:, 0] = True
    with pytest.raises(ValueError, match="held_out marks values that observed leaves out"):
        _fit(f, x, held_out=held, observed=observed, num_iterations=2, mmd_steps=0)


def test_calibrate_spread_refuses_a_nugget_larger_than_the_spread():
    truth, x, f = synthetic_teachers(20, num_points=30, seed=2)
    held = _held_out(20, 30, 0.5, 3)
    student = _fit(f, x, num_iterations=2, mmd_steps=0, include_nugget=True)
    student.dlf.set_noise_variance(10 * float(f.var()))
    with pytest.raises(InfeasibleCalibration, match="nugget the predictive keeps alone exceeds the teachers' out-of-sample "
                       "spread, so no loading scale matches it; distill with include_nugget=False"):
        calibrate_spread(student, x, f, held)


def test_calibrate_spread_refuses_teachers_that_agree_exactly_at_the_held_out_points():
    truth, x, f = synthetic_teachers(20, num_points=30, seed=2)
    held = _held_out(20, 30, 0.5, 3)
    student = _fit(f, x, num_iterations=2, mmd_steps=0)
    with pytest.raises(InfeasibleCalibration, match="teachers agree exactly at every held-out point"):
        calibrate_spread(student, x, f.mean(0).expand_as(f).clone(), held)


def test_calibrate_spread_names_the_growth_when_it_alone_exceeds_the_spread():
    """Without the nugget in the predictive, a steep growth beyond the data can be what exceeds the spread at
    held-out points away from the design (here half the points, off the anchors): the error names that fix."""
    truth, x, f = synthetic_teachers(20, num_points=30, seed=2)
    held = _held_out(20, 30, 0.5, 3)
    student = _fit(f[:, :15], x[:15], num_iterations=2, mmd_steps=0, distance_feature=True, design="given")
    with torch.no_grad():
        student.dlf.nugget_growth = torch.tensor(6.0)
    assert not student.include_nugget and float(student._nugget(x[15:]).max()) > 100 * float(f.var())
    with pytest.raises(InfeasibleCalibration, match="the nugget's growth beyond the data, which the predictive keeps, alone "
                       "exceeds .*; distill with distance_feature=False for a constant nugget"):
        calibrate_spread(student, x, f, held)
