"""The distilled student: Predictive compatibility, predictions, save/load."""

import math

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


@pytest.mark.parametrize("make", [_regression_student, _classification_student, _full_classification_student, _loading_body_student])
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
    with pytest.raises(ValueError, match=r"do not fit the saved architecture \(body.0.bias"):
        Student.load(huge)  # decided on the meta device: no 24 GB allocation
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
