"""Tests for pyro_dlf_bench.baselines.classifiers on scikit-learn's digits (8×8, fast)."""

import pytest
import torch
import torch.nn.functional as F

from pyro_dlf_bench.baselines.classifiers import (
    BatchEnsembleClassifier,
    BatchEnsembleConv2d,
    ConvEnsemble,
    DirichletClassifier,
    HydraClassifier,
    prediction_from_probs,
)
from pyro_dlf_bench.baselines.divergences import f_divergence
from pyro_dlf_bench.datasets import load_digits_images

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    data = load_digits_images(seed=0)
    torch.manual_seed(0)
    teachers = ConvEnsemble(SHAPE, 10, 3, channels=(8, 16), width=32).fit(data.x_train, data.y_train, epochs=8, batch_size=64, lr=3e-3)
    return data, teachers


def test_teachers_learn_and_differ(digits):
    data, teachers = digits
    logits = teachers.member_logits(data.x_test)
    assert logits.shape == (3, data.x_test.shape[0], 10)
    accuracy = (logits.argmax(-1) == data.y_test).float().mean(1)
    assert bool((accuracy > 0.85).all()), accuracy
    assert not torch.allclose(logits[0], logits[1])  # different initializations
    pred = teachers.predict(data.x_test)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(data.x_test.shape[0], dtype=pred.probs.dtype))
    assert bool((pred.mutual_information >= 0).all()) and float(pred.mutual_information.mean()) > 0


def test_fit_is_reproducible_from_the_seed(digits):
    data, _ = digits
    a = ConvEnsemble(SHAPE, 10, 2, (4,), 8).fit(data.x_train[:200], data.y_train[:200], epochs=1, seed=3)
    b = ConvEnsemble(SHAPE, 10, 2, (4,), 8).fit(data.x_train[:200], data.y_train[:200], epochs=1, seed=3)
    torch.testing.assert_close(a.member_logits(data.x_test), b.member_logits(data.x_test))


@pytest.mark.parametrize("make", [
    lambda: ConvEnsemble(SHAPE, 10, 3, (4, 8), 16),
    lambda: HydraClassifier(SHAPE, 10, 3, (4, 8), 16),
    lambda: BatchEnsembleClassifier(SHAPE, 10, 3, (4, 8), 16),
], ids=["small-Ens", "Hydra", "BatchEnsemble"])
def test_one_to_one_distillation_moves_each_member_towards_its_teacher(digits, make):
    data, teachers = digits
    x = data.x_train
    target = teachers.member_logits(x).log_softmax(-1)
    student = make()
    student.distill(x, target, epochs=1, lr=1e-6, seed=0)  # essentially the initialization
    before = f_divergence(target, student.evaluate(x).log_softmax(-1), "forward_kl", reduction="none").mean(1)
    student.distill(x, target, epochs=30, batch_size=64, lr=3e-3, seed=0)
    after = f_divergence(target, student.evaluate(x).log_softmax(-1), "forward_kl", reduction="none").mean(1)
    assert after.shape == (3,)
    assert bool((after < 0.5 * before).all()), (before, after)
    if not isinstance(student, ConvEnsemble):
        return
    # Independent members each follow their own teacher: member k is closest to teacher k.
    cross = torch.stack([f_divergence(target[j], student.evaluate(x)[k].log_softmax(-1), "forward_kl") for k in range(3) for j in range(3)]).view(3, 3)
    assert bool((cross.diagonal() <= cross.min(1).values + 1e-6).all()), cross


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "js", "tv"])
def test_kd_from_the_ensemble_mean_with_each_f_divergence(digits, divergence):
    data, teachers = digits
    x = data.x_train
    mean = teachers.member_logits(x).log_softmax(-1).logsumexp(0, keepdim=True) - torch.log(torch.tensor(3.0))
    student = ConvEnsemble(SHAPE, 10, 1, (4, 8), 16)
    student.distill(x, mean, divergence=divergence, epochs=1, lr=1e-6)
    before = float(f_divergence(mean[0], student.evaluate(x)[0].log_softmax(-1), divergence))
    student.distill(x, mean, divergence=divergence, epochs=30, batch_size=64, lr=3e-3)
    after = float(f_divergence(mean[0], student.evaluate(x)[0].log_softmax(-1), divergence))
    assert after < 0.5 * before


def test_proxy_end2_student(digits):
    data, teachers = digits
    x = data.x_train
    target = teachers.member_logits(x).log_softmax(-1)
    student = DirichletClassifier(SHAPE, 10, (4, 8), 16).distill(x, target, epochs=30, batch_size=64, lr=3e-3)
    pred = student.predict(data.x_test)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(data.x_test.shape[0], dtype=pred.probs.dtype))
    assert float((pred.probs.argmax(-1) == data.y_test).float().mean()) > 0.7
    torch.testing.assert_close(pred.total_entropy, pred.expected_entropy + pred.mutual_information)
    assert bool((pred.mutual_information >= 0).all())


def test_batch_ensemble_conv_is_a_conv_with_a_rank_one_modulated_kernel():
    torch.manual_seed(0)
    layer = BatchEnsembleConv2d(3, 5, num_members=2)
    with torch.no_grad():
        layer.r.normal_()
        layer.s.normal_()
    x = torch.randn(2, 4, 3, 6, 6)
    out = layer(x)
    for i in range(2):
        kernel = layer.conv.weight * (layer.s[i][:, None] * layer.r[i][None, :])[:, :, None, None]
        torch.testing.assert_close(out[i], F.conv2d(x[i], kernel, layer.bias[i], padding=1), atol=1e-5, rtol=1e-5)


def test_prediction_from_probs_is_the_mixture():
    probs = torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]])
    pred = prediction_from_probs(probs)
    torch.testing.assert_close(pred.probs, torch.tensor([[0.5, 0.5]]))
    assert float(pred.mutual_information[0]) > 0.3


def test_bad_inputs(digits):
    data, teachers = digits
    small = ConvEnsemble(SHAPE, 10, 3, (4,), 8)
    with pytest.raises(ValueError, match="teacher_log_probs holds 2 teachers"):
        small.distill(data.x_train[:10], torch.zeros(2, 10, 10).log_softmax(-1))
    with pytest.raises(ValueError, match="divergence must be one of"):
        small.distill(data.x_train[:10], torch.zeros(3, 10, 10).log_softmax(-1), divergence="hellinger")
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\)"):
        small.predict(torch.zeros(4, 1, 28, 28))
    with pytest.raises(TypeError, match="labels must be an int64"):
        small.fit(data.x_train[:10], data.y_train[:10].float())
    with pytest.raises(ValueError, match="image_shape"):
        ConvEnsemble((8, 8), 10, 2)
