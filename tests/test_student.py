"""The distilled student: Predictive compatibility, predictions, save/load."""

import math
import os

import pytest
import torch
from pyro.infer import Predictive

from pyro_dlf import Student
from pyro_dlf.models import DeepLatentFactor

from synthetic import random_dlf


def _regression_student():
    return Student(random_dlf(dtype=torch.float32), "regression", 5.0, 4.0)


def _classification_student():
    return Student(random_dlf(num_outputs=3, dtype=torch.float32), "classification")


def _full_classification_student():
    return Student(random_dlf(num_outputs="full", dtype=torch.float32), "classification")


def _loading_body_student():
    return Student(random_dlf(dtype=torch.float32, loading_hidden=(6,)), "regression", 5.0, 4.0)


def _distance_student():
    return Student(random_dlf(dtype=torch.float32, loading_hidden=(6,), distance_anchors=7), "regression", 5.0, 4.0)


def test_full_student_draws_have_the_per_input_class_covariance():
    """Predictive / predict draws of the full model: mean μ(x), covariance of the (point, class) pairs
    Φ_stacked Φ_stackedᵀ; 5 standard errors per entry, as for the regression student."""
    student = _full_classification_student()
    x = torch.randn(3, 2)
    S = 4000
    with torch.no_grad():
        mean, loading = student.dlf.mean_and_loading(x)
    K = student.dlf.covariance(x).detach()
    se_mean = (K.diagonal() / S).sqrt()
    se_cov = ((K.pow(2) + K.diagonal()[:, None] * K.diagonal()[None, :]) / S).sqrt()
    draws = {"Predictive": Predictive(student, num_samples=S, parallel=True)(x)["function"].detach(),
             "predict": student.predict(x, S, return_samples=True).logit_samples}
    for name, d in draws.items():
        assert d.shape == (S, 3, 3), name
        flat = d.reshape(S, 9)
        assert ((flat.mean(0) - mean.reshape(9)).abs() <= 5 * se_mean).all(), name
        assert ((torch.cov(flat.T) - K).abs() <= 5 * se_cov).all(), name


def test_predictive_and_sample_agree_with_the_process():
    """Predictive draws and dlf.sample both have mean μ(x) and covariance Φ(x)Φ(x)ᵀ.

    Tolerances: S draws give a mean with standard error √(K_jj/S) and a sample
    covariance entry with standard error √((K_jk² + K_jj K_kk)/S); we allow
    5 standard errors for every entry (Bonferroni over ≤ 50 entries at ~1e-5 each).
    """
    student = _regression_student()
    x = torch.randn(5, 2)
    S = 4000
    with torch.no_grad():
        mean, loading = student.dlf.mean_and_loading(x)
    K = loading @ loading.T
    se_mean = (K.diagonal() / S).sqrt()
    se_cov = ((K.pow(2) + K.diagonal()[:, None] * K.diagonal()[None, :]) / S).sqrt()
    draws = {
        "Predictive": Predictive(student, num_samples=S, parallel=True)(x)["function"].detach(),
        "sample": student.dlf.sample(x, S),
        "predict": student.predict(x, S, return_samples=True).function_samples,
    }
    for name, d in draws.items():
        assert d.shape == (S, 5), name
        assert ((d.mean(0) - mean).abs() <= 5 * se_mean).all(), name
        assert ((torch.cov(d.T) - K).abs() <= 5 * se_cov).all(), name


def test_predictive_y_has_the_noise_prior():
    student = _regression_student()
    out = Predictive(student, num_samples=3000, parallel=True)(torch.randn(2, 2))
    # IG(5, 4) has mean 1 and variance 1/3: check the mean within 5 standard errors.
    assert abs(float(out["noise_variance"].mean()) - 1.0) < 5 * math.sqrt((1 / 3) / 3000)
    assert out["y"].shape == (3000, 2)


def test_regression_prediction_and_mixture():
    student = _regression_student()
    x = torch.randn(7, 2)
    pred = student.predict(x, 50, return_samples=True)
    assert pred.mean.shape == pred.epistemic_variance.shape == (7,)
    torch.testing.assert_close(pred.aleatoric_variance, torch.full((7,), 1.0))  # b/(a−1)
    assert pred.sample_observations().shape == (50, 7)
    means, variances = student.predictive_mixture(x, 16)
    assert means.shape == variances.shape == (16, 7)
    # The K quantile nodes of IG(5, 4), the same at every input.
    from pyro_dlf.noise import inverse_gamma_quantiles

    nodes = inverse_gamma_quantiles(5.0, 4.0, 16).float()
    torch.testing.assert_close(variances - pred.epistemic_variance, nodes[:, None].expand(16, 7))


@pytest.mark.parametrize("make", [_regression_student, _classification_student])
def test_predict_streams_in_batches_and_keeps_draws_only_when_asked(make):
    student = make()
    x = torch.randn(11, 2)
    torch.manual_seed(5)
    whole = student.predict(x, 30, batch_size=100, return_samples=True)
    torch.manual_seed(5)
    batched = student.predict(x, 30, batch_size=3, return_samples=True)
    for key, value in vars(whole).items():
        if value is not None:
            torch.testing.assert_close(getattr(batched, key), value, msg=key)
    plain = student.predict(x, 30, batch_size=3)
    assert all(getattr(plain, key) is None for key in ("function_samples", "noise_variance_samples", "logit_samples")
               if hasattr(plain, key))


def test_classification_prediction():
    student = _classification_student()
    pred = student.predict(torch.randn(6, 2), 200, batch_size=4)
    assert pred.probs.shape == (6, 3)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(6))
    torch.testing.assert_close(pred.total_entropy - pred.expected_entropy, pred.mutual_information)
    assert (pred.mutual_information >= 0).all()
    out = Predictive(student, num_samples=10)(torch.randn(6, 2))
    assert out["y"].shape == (10, 6)


@pytest.mark.parametrize("make", [_regression_student, _classification_student, _full_classification_student, _loading_body_student,
                                  _distance_student])
def test_save_load_round_trip_is_exact(tmp_path, make):
    student = make()
    path = tmp_path / "student.pt"
    student.save(path)
    loaded = Student.load(path)
    x = torch.randn(4, 2)
    for a, b in zip(student.dlf.mean_and_loading(x), loaded.dlf.mean_and_loading(x)):
        assert torch.equal(a, b)
    assert loaded.task == student.task and loaded.include_nugget == student.include_nugget
    assert loaded.noise_concentration == student.noise_concentration and loaded.noise_rate == student.noise_rate
    assert loaded.dlf.config() == student.dlf.config()
    for key, value in student.dlf.state_dict().items():
        assert torch.equal(value, loaded.dlf.state_dict()[key]), key


def test_files_without_a_covariance_key_load_as_separable(tmp_path):
    """Students saved before the full model existed carry no covariance keys: they are separable."""
    student = _classification_student()
    student.save(tmp_path / "s.pt")
    payload = torch.load(tmp_path / "s.pt", weights_only=True)
    for key in ("covariance", "centered_loadings"):
        del payload["model"][key]
    del payload["checksum"]
    payload["format_version"] = 1  # the layout before checksums
    torch.save(payload, tmp_path / "old.pt")
    loaded = Student.load(tmp_path / "old.pt")
    assert loaded.dlf.separable
    x = torch.randn(4, 2)
    assert torch.equal(loaded.dlf.loading(x), student.dlf.loading(x))


def test_save_is_atomic_and_load_takes_file_objects(tmp_path, monkeypatch):
    """A failed overwrite leaves the previous file intact and no temporary behind; file objects round-trip."""
    import io

    student, other = _regression_student(), _classification_student()
    path = tmp_path / "student.pt"
    student.save(path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["student.pt"]
    buffer = io.BytesIO()
    other.save(buffer)
    buffer.seek(0)
    loaded = Student.load(buffer)
    x = torch.randn(3, 2)
    assert torch.equal(loaded.dlf.loading(x), other.dlf.loading(x))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        student.save(tmp_path / "no-such-folder" / "s.pt")


def test_damaged_files_are_reported_not_loaded(tmp_path):
    """Flipped weight bytes fail the checksum; a configuration that claims a huge layer is rejected
    before any allocation; non-finite weights and bad fields are named."""
    student = _regression_student()
    path = tmp_path / "student.pt"
    student.save(path)
    data = bytearray(path.read_bytes())
    weights = student.dlf.loading_head.weight.detach().contiguous().numpy().tobytes()
    at = bytes(data).find(weights)
    assert at > 0
    for k in range(min(64, len(weights))):
        data[at + k] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum does not match"):
        Student.load(tmp_path / "flipped.pt")

    from pyro_dlf.student_file import checksum

    def rewritten(name, change):
        payload = torch.load(path, weights_only=True)
        change(payload)
        payload["checksum"] = checksum(payload)  # a consistent file whose contents are wrong
        torch.save(payload, tmp_path / name)
        return tmp_path / name

    huge = rewritten("huge.pt", lambda p: p["model"].update(hidden=[10 ** 9]))
    with pytest.raises(ValueError, match=r"field hidden\[0\] = 1000000000 is larger than any tensor axis"):
        Student.load(huge)  # decided from the saved tensors' sizes: no 24 GB allocation
    narrow = rewritten("narrow.pt", lambda p: p["model"].update(hidden=[5]))
    with pytest.raises(ValueError, match=r"do not fit the saved architecture \(body.0.bias"):
        Student.load(narrow)  # decided on the meta device
    nan = rewritten("nan.pt", lambda p: p["state_dict"]["mean_head.bias"].fill_(float("nan")))
    with pytest.raises(ValueError, match="non-finite weights in 'mean_head.bias'"):
        Student.load(nan)
    for field, value, match in (("num_factors", 0, "num_factors must be a positive int"),
                                ("activation", "Swish", "unknown activation"), ("hidden", "50", "hidden must be a list"),
                                ("loading_hidden", [0], r"loading_hidden\[0\] must be a positive int"),
                                ("loading_hidden", [], "loading_hidden must be null or a list of widths")):
        bad = rewritten(f"{field}.pt", lambda p, f=field, v=value: p["model"].update({f: v}))
        with pytest.raises(ValueError, match=match):
            Student.load(bad)


def test_files_without_a_loading_body_key_load_with_one_shared_body(tmp_path):
    """Students saved before separate loading bodies existed carry no loading_hidden: one body for both heads."""
    student = _regression_student()
    student.save(tmp_path / "s.pt")
    payload = torch.load(tmp_path / "s.pt", weights_only=True)
    del payload["model"]["loading_hidden"]
    from pyro_dlf.student_file import checksum

    payload["checksum"] = checksum(payload)
    torch.save(payload, tmp_path / "old.pt")
    loaded = Student.load(tmp_path / "old.pt")
    x = torch.randn(4, 2)
    assert loaded.dlf.loading_hidden is None and torch.equal(loaded.dlf.loading(x), student.dlf.loading(x))


def test_custom_body_round_trip_needs_the_body(tmp_path):
    body = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh())
    student = Student(DeepLatentFactor(num_factors=2, body=body, body_features=4), "regression", 3.0, 1.0)
    student.save(tmp_path / "s.pt")
    with pytest.raises(ValueError, match="body"):
        Student.load(tmp_path / "s.pt")
    loaded = Student.load(tmp_path / "s.pt", body=torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh()))
    x = torch.randn(3, 2)
    assert torch.equal(loaded.dlf.loading(x), student.dlf.loading(x))


def test_corrupted_and_foreign_files_fail_clearly(tmp_path):
    student = _regression_student()
    path = tmp_path / "student.pt"
    student.save(path)
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable pyro_dlf student file"):
        Student.load(tmp_path / "truncated.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable pyro_dlf student file"):
        Student.load(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="missing format header"):
        Student.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="path"):
        Student.load(tmp_path / "missing.pt")


def test_student_arguments():
    with pytest.raises(ValueError, match="task"):
        Student(random_dlf(), "ranking")
    with pytest.raises(ValueError, match="noise_concentration"):
        Student(random_dlf(), "regression")
    with pytest.raises(ValueError, match="multivariate"):
        Student(random_dlf(), "classification")
    with pytest.raises(ValueError, match="num_samples"):
        _regression_student().predict(torch.randn(2, 2), 0)


def test_two_students_under_predictive_keep_their_own_parameters():
    a, b = _classification_student(), Student(random_dlf(num_outputs=3, seed=1, dtype=torch.float32), "classification")
    L_b = b.dlf.class_factor.detach().clone()
    x = torch.randn(4, 2)
    Predictive(a, num_samples=2)(x)
    Predictive(b, num_samples=2)(x)
    assert torch.equal(b.dlf.class_factor.detach(), L_b)
    assert not torch.equal(a.dlf.class_factor.detach(), L_b)


def test_inputs_are_checked():
    student = _regression_student()
    with pytest.raises(ValueError, match=r"x must have shape \(num_points, 2\)"):
        student.predict(torch.randn(3))
    with pytest.raises(ValueError, match=r"x must have shape"):
        student.predictive_mixture(torch.randn(3, 5))
    with pytest.raises(ValueError, match="batch_size"):
        student.predict(torch.randn(3, 2), 10, batch_size=0)


def test_nugget_in_the_predictive():
    """include_nugget: draws of new teachers, covariance ΦΦᵀ + σ_f² I (5 standard errors per entry)."""
    student = _regression_student()
    student.include_nugget = True
    x = torch.randn(4, 2)
    S = 4000
    with torch.no_grad():
        mean, loading = student.dlf.mean_and_loading(x)
        K = loading @ loading.T + student.dlf.noise_variance * torch.eye(4)
    se = ((K.pow(2) + K.diagonal()[:, None] * K.diagonal()[None, :]) / S).sqrt()
    for draws in (student.predict(x, S, return_samples=True).function_samples, Predictive(student, num_samples=S, parallel=True)(x)["function"].detach()):
        assert ((torch.cov(draws.T) - K).abs() <= 5 * se).all()
    pred = student.predict(x, 10)
    torch.testing.assert_close(pred.epistemic_variance, K.diagonal())
    means, variances = student.predictive_mixture(x, 8)
    student.include_nugget = False
    _, plain = student.predictive_mixture(x, 8)
    torch.testing.assert_close(variances - plain, student.dlf.noise_variance.detach().expand(8, 4))


class _TanhBody(torch.nn.Module):
    """A custom body: one linear layer and tanh."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 4)

    def forward(self, x):
        return torch.tanh(self.linear(x))


class _ReluBody(torch.nn.Module):
    """Another class with the same parameter names and shapes, and another function."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 4)

    def forward(self, x):
        return torch.relu(self.linear(x))


def _custom_student(body):
    torch.manual_seed(0)
    return Student(DeepLatentFactor(num_factors=2, body=body, body_features=4), "regression", 3.0, 1.0)


def test_a_body_of_another_class_is_refused_on_load(tmp_path):
    """Same parameter shapes, another function: the file records the body's class (and its submodules'),
    so the wrong body is named instead of loaded; the right one round-trips exactly."""
    student = _custom_student(_TanhBody())
    student.save(tmp_path / "s.pt")
    with pytest.raises(ValueError, match=r"body is a .*_ReluBody but the student was saved with a .*_TanhBody body; "
                                         r"pass an instance of .*_TanhBody"):
        Student.load(tmp_path / "s.pt", body=_ReluBody())
    loaded = Student.load(tmp_path / "s.pt", body=_TanhBody())
    x = torch.randn(5, 2)
    assert torch.equal(loaded.predict(x, 4).mean, student.predict(x, 4).mean)

    # One class, another layer layout: nn.Sequential with another activation.
    sequential = _custom_student(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh()))
    sequential.save(tmp_path / "seq.pt")
    with pytest.raises(ValueError, match=r"body's submodule '1' is torch\.nn\.modules\.activation\.ReLU but the saved "
                                         r"body's is torch\.nn\.modules\.activation\.Tanh"):
        Student.load(tmp_path / "seq.pt", body=torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU()))


def test_files_without_the_body_record_load_as_before(tmp_path):
    """Files written before the body's class was recorded: any body with fitting weights loads."""
    from pyro_dlf.student_file import checksum

    student = _custom_student(_TanhBody())
    student.save(tmp_path / "s.pt")
    payload = torch.load(tmp_path / "s.pt", weights_only=True)
    assert payload["body_class"].endswith("_TanhBody") and payload["body_modules"] == [["linear", "torch.nn.modules.linear.Linear"]]
    del payload["body_class"], payload["body_modules"]
    payload["checksum"] = checksum(payload)
    torch.save(payload, tmp_path / "old.pt")
    loaded = Student.load(tmp_path / "old.pt", body=_ReluBody())
    assert torch.equal(loaded.dlf.body.linear.weight, student.dlf.body.linear.weight)
    with pytest.raises(ValueError, match=r"body does not have the saved architecture \(body.linear.bias: file \(4,\), body None"):
        Student.load(tmp_path / "old.pt", body=torch.nn.Sequential())


def test_distance_files_without_the_growth_or_the_reference_load_as_they_predicted(tmp_path):
    """Files written before the nugget grew with the distance load with a constant nugget; files written before the
    reference distance keep their growth past d = 1, as they did (mathematics §9.4)."""
    from pyro_dlf.student_file import checksum

    student = _distance_student()
    student.save(tmp_path / "s.pt")
    payload = torch.load(tmp_path / "s.pt", weights_only=True)
    state = payload["state_dict"]
    assert "distance_reference" in state and "nugget_growth_unconstrained" in state
    x = torch.cat([student.dlf.anchors[:2] * student.dlf.input_scale + student.dlf.input_loc, 5 * torch.ones(2, 2)])
    for key in ("distance_reference", "nugget_growth_unconstrained"):
        del state[key]
        payload["checksum"] = checksum(payload)
        torch.save(payload, tmp_path / "old.pt")
        dlf = Student.load(tmp_path / "old.pt").dlf
        with torch.no_grad():
            if key == "distance_reference":
                reference = 2 ** student.dlf.nugget_growth
                expected = student.dlf.noise_variance * (student.dlf.nugget_weight(x) - reference).clamp_min(0)
                torch.testing.assert_close(dlf.nugget_growth_variance(x), expected)
            else:
                torch.testing.assert_close(dlf.nugget_variance(x), student.dlf.noise_variance.expand(4), rtol=0, atol=0)
                assert torch.all(dlf.nugget_growth_variance(x) == 0)


def test_load_checks_body_and_map_location(tmp_path):
    plain, custom = _regression_student(), _custom_student(_TanhBody())
    plain.save(tmp_path / "plain.pt")
    custom.save(tmp_path / "custom.pt")
    with pytest.raises(ValueError, match="body: this student has the default MLP body.*drop body="):
        Student.load(tmp_path / "plain.pt", body=_TanhBody())
    with pytest.raises(TypeError, match="body must be a torch.nn.Module"):
        Student.load(tmp_path / "custom.pt", body="_TanhBody")
    with pytest.raises(ValueError, match="body is a torch.nn.modules.container.Sequential but the student was saved with"):
        Student.load(tmp_path / "custom.pt", body=torch.nn.Sequential())
    for bad, error, match in (("gpu", ValueError, "map_location 'gpu' is not a device; pass a device such as 'cpu'"),
                              ({"cuda:0": "cpu"}, TypeError, "map_location must be a device such as 'cpu'"),
                              (0, TypeError, "map_location must be a device"),
                              ("meta", ValueError, "map_location 'meta' is not a device a student can be loaded onto; pass one of 'cpu'")):
        with pytest.raises(error, match=match):
            Student.load(tmp_path / "plain.pt", map_location=bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="map_location 'cuda:0' is not available on this machine"):
            Student.load(tmp_path / "plain.pt", map_location="cuda:0")
    loaded = Student.load(tmp_path / "plain.pt", map_location=torch.device("cpu"))
    assert loaded.dlf.loading_head.weight.device.type == "cpu"


@pytest.mark.parametrize("field, value", [("hidden", [10 ** 9]), ("hidden", [8] * 10 ** 6), ("loading_hidden", [10 ** 9]),
                                          ("in_features", 10 ** 9), ("num_factors", 10 ** 9), ("body_features", 10 ** 9)])
def test_no_module_is_built_from_an_unchecked_width(tmp_path, monkeypatch, field, value):
    """A width (or layer count) field beyond the saved tensors' sizes is named before any module is built,
    even on the meta device."""
    from pyro_dlf.student_file import checksum

    _loading_body_student().save(tmp_path / "s.pt")
    payload = torch.load(tmp_path / "s.pt", weights_only=True)
    payload["model"][field] = value
    payload["checksum"] = checksum(payload)
    torch.save(payload, tmp_path / "bad.pt")
    built = []
    original = DeepLatentFactor.__init__
    monkeypatch.setattr(DeepLatentFactor, "__init__", lambda self, *a, **k: built.append(a) or original(self, *a, **k))
    with pytest.raises(ValueError, match=rf"configuration field {field}(\[0\])? (= 1000000000 is larger than any tensor "
                                         r"axis|lists 1000000 layers but the file holds \d+ tensors)"):
        Student.load(tmp_path / "bad.pt")
    assert built == []


@pytest.mark.parametrize("a, b, match", [(0.0, 1.0, "noise_concentration must be positive"),
                                         (-1.0, 1.0, "noise_concentration must be positive"),
                                         (float("inf"), float("inf"), "noise_concentration must be finite"),
                                         (float("nan"), float("nan"), "noise_concentration must be finite"),
                                         (3.0, float("nan"), "noise_rate must be finite"),
                                         (3.0, 0.0, "noise_rate must be positive"),
                                         (True, 1.0, "noise_concentration must be a number"),
                                         ("3", 1.0, "noise_concentration must be a number")])
def test_the_noise_prior_needs_positive_finite_parameters(a, b, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Student(random_dlf(dtype=torch.float32), "regression", a, b)


@pytest.mark.parametrize("a", [0.5, 1.0])
def test_a_noise_prior_without_a_mean_gives_a_proper_predictive_and_an_infinite_aleatoric_variance(a):
    """IG(a, b) with a <= 1 has no mean: the aleatoric variance E[σ²] is reported as infinite, the draws stay finite."""
    from pyro_dlf.noise import HeavyTailWarning

    with pytest.warns(HeavyTailWarning, match=r"noise_concentration a = .* <= 1: the noise prior IG\(a, b\) has no mean"):
        student = Student(random_dlf(dtype=torch.float32), "regression", a, 1.0)
    assert student.aleatoric_variance == float("inf")
    prediction = student.predict(torch.randn(4, 2), 50, return_samples=True)
    assert bool(torch.isinf(prediction.aleatoric_variance).all()) and bool(torch.isfinite(prediction.mean).all())
    assert bool(torch.isfinite(prediction.noise_variance_samples).all()) and bool((prediction.noise_variance_samples > 0).all())


def test_noise_prior_per_output_and_misplaced_noise_arguments():
    two = random_dlf(num_outputs=2, covariance="full", dtype=torch.float32)
    student = Student(two, "regression", (3.0, 5.0), 1.0)
    assert student.noise_concentration == (3.0, 5.0) and student.noise_rate == (1.0, 1.0)
    assert student.aleatoric_variance == (0.5, 0.25)
    with pytest.raises(ValueError, match=r"noise_concentration must be positive, got \(3.0, -0.9\)"):
        Student(two, "regression", (3.0, -0.9), (1.0, 1.0))
    with pytest.raises(ValueError, match=r"noise_rate must be one number or 2 \(one per output\), got 3 values"):
        Student(two, "regression", 3.0, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="noise_concentration and noise_rate are for regression students"):
        Student(random_dlf(num_outputs=3), "classification", 3.0, 1.0)
    with pytest.raises(ValueError, match="noise_factor_exponent and noise_factor_gram are for one-output regression"):
        Student(random_dlf(num_outputs=3), "classification", noise_factor_exponent=1.0)
    with pytest.raises(ValueError, match="noise_factor_exponent 1 needs noise_factor_gram"):
        Student(random_dlf(), "regression", 3.0, 1.0, noise_factor_exponent=1.0)
    with pytest.raises(ValueError, match="noise_factor_gram is used only with a nonzero noise_factor_exponent"):
        Student(random_dlf(), "regression", 3.0, 1.0, noise_factor_gram=torch.eye(3) / 3)
    with pytest.raises(TypeError, match="include_nugget must be True or False"):
        Student(random_dlf(), "regression", 3.0, 1.0, include_nugget="no")
    with pytest.raises(TypeError, match="dlf must be a fitted pyro_dlf.models.DeepLatentFactor"):
        Student("model.pt", "regression", 3.0, 1.0)
    with pytest.raises(ValueError, match="set_noise_law: concentration and rate must be positive finite numbers"):
        _regression_student().set_noise_law(-0.8, 1.0, 1.0, torch.eye(3, dtype=torch.float64) / 3)


def test_a_file_whose_noise_prior_is_not_positive_is_named(tmp_path):
    from pyro_dlf.student_file import checksum

    _regression_student().save(tmp_path / "s.pt")
    payload = torch.load(tmp_path / "s.pt", weights_only=True)
    payload["noise"] = [-0.8, 1.0]
    payload["checksum"] = checksum(payload)
    torch.save(payload, tmp_path / "negative.pt")
    with pytest.raises(ValueError, match=r"negative.pt': the noise prior must be two positive finite numbers .*got \[-0.8, 1.0\]"):
        Student.load(tmp_path / "negative.pt")


def test_predict_names_its_bad_arguments():
    student = _regression_student()
    x = torch.randn(3, 2)
    for bad, error in ((True, TypeError), (2.5, TypeError), ("10", TypeError), (0, ValueError), (-1, ValueError)):
        with pytest.raises(error, match="num_samples must be a positive int"):
            student.predict(x, bad)
        with pytest.raises(error, match="max_nodes must be a positive int"):
            student.predict(x, max_nodes=bad)
    for bad in (False, 2.5, 0, "10"):
        with pytest.raises(ValueError, match="batch_size must be None or a positive int"):
            student.predict(x, 10, batch_size=bad)
    torch.manual_seed(0)
    whole = student.predict(x, 10, batch_size=None, return_samples=True)
    torch.manual_seed(0)
    torch.testing.assert_close(whole.function_samples, student.predict(x, 10, batch_size=1, return_samples=True).function_samples)
    with pytest.raises(TypeError, match="return_samples must be True or False"):
        student.predict(x, 10, return_samples="yes")
    with pytest.raises(ValueError, match="num_components must be a positive int"):
        student.predictive_mixture(x, 0)


def test_non_finite_prediction_inputs_are_named_as_such():
    student = _regression_student()
    x = torch.randn(4, 2)
    x[2, 1] = float("nan")
    for call in (student.predict, student.predictive_mixture):
        with pytest.raises(ValueError, match=r"x contains 1 non-finite value\(s\) \(NaN or Inf\), the first at index \(2, 1\); "
                                             r"the student predicts at finite inputs only") as info:
            call(x)
        assert "distill" not in str(info.value)


def test_inputs_too_large_for_the_dtype_are_named_not_returned_as_infinities():
    """1e30 overflows float32 in ‖Φ(x)‖²: an error that names x and both fixes; in float64 the same
    student gives finite results."""
    student = _regression_student()
    x = torch.full((3, 2), 1e30)
    with pytest.raises(ValueError, match=r"x has values up to 1e\+30: the student's outputs there overflow float32 .*"
                                         r"rescale it .*student.double\(\)"):
        student.predict(x, 10)
    with pytest.raises(ValueError, match="overflow float32"):
        student.predictive_mixture(x, 4)
    # Classification: the logits stay finite there, and so do the probabilities.
    assert torch.isfinite(_classification_student().predict(torch.full((3, 2), 1e30), 10).probs).all()
    pred = student.double().predict(x.double(), 10)
    assert torch.isfinite(pred.epistemic_variance).all() and torch.isfinite(pred.mean).all()


def test_save_checks_its_path(tmp_path):
    import io

    student = _regression_student()
    for bad in (None, 3, 2.5, ["s.pt"], object()):
        with pytest.raises(TypeError, match=r"path must be a file name .* or a binary file object with write\(\)"):
            student.save(bad)
    with pytest.raises(TypeError, match=r"path is a text-mode file; open it in binary mode \(wb\)"):
        student.save(io.StringIO())
    with pytest.raises(ValueError, match="path is empty"):
        student.save("")
    (tmp_path / "ro.pt").write_bytes(b"")
    with open(tmp_path / "ro.pt", "rb") as handle, pytest.raises(ValueError, match=r"path is a file object open only for reading; open it with wb"):
        student.save(handle)
    with pytest.raises(ValueError, match="is a folder; give a file name inside it"):
        student.save(tmp_path)
    for bad in (None, 3, object()):
        with pytest.raises(TypeError, match=r"path must be a file name .* with read\(\) and seek\(\)"):
            Student.load(bad)
    student.save(str(tmp_path / "s.pt").encode())  # bytes paths are paths
    assert Student.load(tmp_path / "s.pt").noise_rate == 4.0


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_save_keeps_the_replaced_files_mode_else_the_umask(tmp_path):
    import stat

    student = _regression_student()
    path = tmp_path / "s.pt"
    path.write_bytes(b"old")
    for mode in (0o644, 0o640):
        path.chmod(mode)
        student.save(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
    old = os.umask(0o027)
    try:
        student.save(tmp_path / "new.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.pt").st_mode) == 0o640  # 0o666 less the umask
    assert Student.load(path).noise_rate == 4.0


def test_save_errors_name_the_users_path(tmp_path, monkeypatch):
    import errno

    student = _regression_student()
    path = tmp_path / "s.pt"

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", f.name)  # names the temporary file

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left on device") as info:
        student.save(path)
    assert str(path) in str(info.value) and ".pyro-dlf-" not in str(info.value) and info.value.errno == errno.ENOSPC
    monkeypatch.undo()

    def refused(source, destination):
        raise PermissionError(errno.EACCES, "Permission denied", source, destination)

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(PermissionError, match="Permission denied") as info:
        student.save(path)
    assert str(path) in str(info.value) and ".pyro-dlf-" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_forward_checks_inputs_and_observed_targets():
    """``student(x, y)`` (Predictive, SVI) names x or y instead of failing inside the network or the likelihood."""
    reg, cls = _regression_student(), _classification_student()
    x = torch.randn(5, 2)
    bad = [(reg, (torch.randn(5, 3),), ValueError, "x must have shape"),
           (reg, (None,), TypeError, "x must be a torch.Tensor"),
           (reg, (x, torch.randn(4)), ValueError, "y must have shape (5,)"),
           (reg, (x, torch.full((5,), float("nan"))), ValueError, "y contains 5 non-finite"),
           (cls, (x, torch.randn(5)), TypeError, "y holds class labels"),
           (cls, (x, torch.full((5,), 3)), ValueError, "class labels must be integers in 0..2"),
           (cls, (x, torch.full((5,), -1)), ValueError, "class labels must be integers in 0..2")]
    for student, args, error, text in bad:
        with pytest.raises(error) as caught:
            student(*args)
        assert text in str(caught.value), (args, caught.value)
    assert reg(x, torch.zeros(5)).shape == (5,)
    assert cls(x, torch.zeros(5, dtype=torch.long)).shape == (5,)


def test_absurd_draw_counts_are_refused_before_allocating():
    student = _regression_student()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="num_samples=1000000000000 needs about"):
        student.predict(x, num_samples=10 ** 12, return_samples=True)
    with pytest.raises(ValueError, match="num_samples=1000000000000 needs about"):
        _full_classification_student().predict(x, num_samples=10 ** 12)
    with pytest.raises(ValueError, match="max_nodes=1000000000000 needs about"):
        Student(random_dlf(num_outputs=3, num_factors=1, dtype=torch.float32), "classification", include_nugget=True).predict(
            x, max_nodes=10 ** 12)
    with pytest.raises(ValueError, match="num_components=10000000000 needs about"):
        student.predictive_mixture(x, num_components=10 ** 10)


def test_the_predictive_keeps_the_nugget_growth_beyond_the_data():
    """A nugget σ_f² (1 + d(x))^β (mathematics §9.4): the predictive keeps its growth beyond the reach of new inputs
    among the data, σ_f² ((1 + d)^β − (1 + d_ref)^β)₊ -- zero at the anchors -- in its summaries, in its mixture, in
    ``function_dist`` and in the draws of the site ``nugget`` (variance within 5 standard errors, √(2/S)
    relative); with ``include_nugget`` all of σ_f² (1 + d)^β."""
    student = _distance_student()
    dlf = student.dlf
    anchors = dlf.anchors * dlf.input_scale + dlf.input_loc
    x = torch.cat([anchors[:2], 4 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0))])
    with torch.no_grad():
        smooth = dlf.function_variance(x)
        nugget = dlf.nugget_variance(x)
        distance = dlf.data_distance(x)[:, 0]
        reference = (1 + dlf.distance_reference).pow(dlf.nugget_growth)
        growth = dlf.noise_variance * ((1 + distance).pow(dlf.nugget_growth) - reference).clamp_min(0)
    assert torch.all(growth[:2] == 0) and torch.all(distance[2:] > dlf.distance_reference) and torch.all(growth[2:] > 0)
    torch.testing.assert_close(student.predict(x, 10).epistemic_variance, smooth + growth)
    means, variances = student.predictive_mixture(x)
    torch.testing.assert_close(variances[0] - variances[0].min(), (smooth + growth) - (smooth + growth).min(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.function_dist(x, include_nugget=False).cov_diag, growth + 1e-6 * dlf.noise_variance.detach())
    torch.testing.assert_close(dlf.nugget_growth_variance(x).detach(), growth)
    torch.testing.assert_close(dlf.growth_at_distance(distance).detach(), growth)
    torch.testing.assert_close(student.function_dist(x).cov_diag, nugget)
    S = 20_000
    torch.manual_seed(1)
    draws = Predictive(student, num_samples=S, parallel=True)(x)["function"].detach()
    assert torch.all((draws.var(0) / (smooth + growth) - 1).abs() < 5 * (2 / S) ** 0.5)
    student.include_nugget = True
    torch.testing.assert_close(student.predict(x, 10).epistemic_variance, smooth + nugget)


def test_a_student_with_non_finite_weights_is_not_saved(tmp_path):
    """A diverged fit is refused at saving, as loading would refuse it; nothing is written."""
    from pyro_dlf.models import DeepLatentFactor

    student = Student(DeepLatentFactor(1, 2, (4,)), "regression", 2.0, 1.0)
    with torch.no_grad():
        student.dlf.mean_head.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"non-finite weights in 'mean_head.bias' \(the fit diverged\) and is not saved"):
        student.save(tmp_path / "student.pt")
    assert not (tmp_path / "student.pt").exists()
