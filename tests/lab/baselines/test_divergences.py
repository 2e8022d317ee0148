"""Tests for pyro_dlf_bench.baselines.divergences (the f-DISTILL losses)."""

import math

import pytest
import torch

from pyro_dlf_bench.baselines.divergences import (
    DIVERGENCES,
    distillation_loss,
    f_divergence,
    sequence_f_divergence,
)

LN2 = math.log(2.0)


def _log(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def _random_log_probs(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# --------------------------------------------------------------------------- values by hand


# p = [1/2, 1/4, 1/4], q = [1/4, 1/4, 1/2], m = (p + q)/2 = [3/8, 1/4, 3/8]
P3, Q3 = [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]
HAND_3 = {
    # 1/2 ln(1/2 / 1/4) + 1/4 ln 1 + 1/4 ln(1/4 / 1/2) = 1/2 ln 2 - 1/4 ln 2
    "forward_kl": 0.5 * math.log(2.0) - 0.25 * math.log(2.0),
    # 1/4 ln(1/4 / 1/2) + 1/4 ln 1 + 1/2 ln(1/2 / 1/4) = the same by the mirror symmetry of the example
    "reverse_kl": 0.25 * math.log(0.5) + 0.5 * math.log(2.0),
    # 1/2 [1/2 ln(4/3) + 1/4 ln(2/3)] + 1/2 [1/4 ln(2/3) + 1/2 ln(4/3)]
    "js": 0.5 * (0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.375))
    + 0.5 * (0.25 * math.log(0.25 / 0.375) + 0.5 * math.log(0.5 / 0.375)),
    # 1/2 (1/4 + 0 + 1/4)
    "tv": 0.25,
}

# An asymmetric pair, p = [0.8, 0.2], q = [0.5, 0.5], m = [0.65, 0.35]
P2, Q2 = [0.8, 0.2], [0.5, 0.5]
HAND_2 = {
    "forward_kl": 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5),
    "reverse_kl": 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2),
    "js": 0.5 * (0.8 * math.log(0.8 / 0.65) + 0.2 * math.log(0.2 / 0.35))
    + 0.5 * (0.5 * math.log(0.5 / 0.65) + 0.5 * math.log(0.5 / 0.35)),
    "tv": 0.5 * (0.3 + 0.3),
}


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("p, q, expected", [(P3, Q3, HAND_3), (P2, Q2, HAND_2)], ids=["3-class", "2-class"])
def test_value_by_hand(divergence, p, q, expected):
    value = f_divergence(_log(p), _log(q), divergence)
    assert value.dim() == 0
    assert value.item() == pytest.approx(expected[divergence], rel=1e-12, abs=1e-15)


def test_hand_example_is_asymmetric_for_kl():
    # The 2-class pair tells forward from reverse KL (the 3-class one cannot).
    assert HAND_2["forward_kl"] != pytest.approx(HAND_2["reverse_kl"], rel=1e-3)
    fwd = f_divergence(_log(P2), _log(Q2), "forward_kl")
    rev = f_divergence(_log(P2), _log(Q2), "reverse_kl")
    torch.testing.assert_close(rev, f_divergence(_log(Q2), _log(P2), "forward_kl"))
    assert not torch.isclose(fwd, rev)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_zero_iff_equal(divergence):
    p = _random_log_probs(64, 7, seed=1)
    q = _random_log_probs(64, 7, seed=2)
    same = f_divergence(p, p, divergence, reduction="none")
    torch.testing.assert_close(same, torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.all(f_divergence(p, q, divergence, reduction="none") > 1e-6)


@pytest.mark.parametrize("divergence", ["js", "tv"])
def test_symmetric(divergence):
    p = _random_log_probs(32, 5, seed=3)
    q = _random_log_probs(32, 5, seed=4)
    torch.testing.assert_close(
        f_divergence(p, q, divergence, reduction="none"), f_divergence(q, p, divergence, reduction="none")
    )


def test_bounds_and_attained_at_disjoint_supports():
    p = _random_log_probs(256, 6, seed=5, scale=6.0)
    q = _random_log_probs(256, 6, seed=6, scale=6.0)
    assert torch.all(f_divergence(p, q, "js", reduction="none") <= LN2)
    assert torch.all(f_divergence(p, q, "tv", reduction="none") <= 1.0)
    a, b = _log([1.0, 0.0]), _log([0.0, 1.0])  # disjoint supports: the bounds are attained
    assert f_divergence(a, b, "js").item() == pytest.approx(LN2, rel=1e-12)
    assert f_divergence(a, b, "tv").item() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("divergence", ["forward_kl", "js", "tv"])
def test_teacher_zeros_give_finite_values_and_gradients(divergence):
    teacher = _log([[0.5, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1], [1.0, 0.0, -2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    loss = distillation_loss(logits, teacher, divergence)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(torch.isfinite(logits.grad)) and logits.grad.abs().sum() > 0


def test_forward_kl_zero_terms_use_0_log_0():
    # KL([1/2, 1/2, 0] || q) = 1/2 ln(1/2 / q_1) + 1/2 ln(1/2 / q_2): the zero class adds nothing
    q = [0.2, 0.3, 0.5]
    expected = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.3)
    assert f_divergence(_log([0.5, 0.5, 0.0]), _log(q), "forward_kl").item() == pytest.approx(expected, rel=1e-12)


def test_reverse_kl_outside_teacher_support_is_inf_not_nan():
    value = f_divergence(_log([0.5, 0.5, 0.0]), _log([0.2, 0.3, 0.5]), "reverse_kl")
    assert value.item() == math.inf


def test_teacher_gradients_are_nan_free_at_zeros():
    teacher = _log([[0.5, 0.5, 0.0]]).requires_grad_(True)
    student = _log([[0.2, 0.3, 0.5]])
    for divergence in ("forward_kl", "js", "tv"):
        teacher.grad = None
        f_divergence(teacher, student, divergence).backward()
        assert not torch.isnan(teacher.grad).any(), divergence


def test_float32_inputs_stay_float32():
    p = _random_log_probs(4, 3, seed=7).float()
    q = _random_log_probs(4, 3, seed=8).float()
    for divergence in DIVERGENCES:
        assert f_divergence(p, q, divergence).dtype == torch.float32


# --------------------------------------------------------------------------- shapes and reductions


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_shapes_and_reductions(divergence):
    p = _random_log_probs(2, 3, 4, 5, seed=9)
    q = _random_log_probs(2, 3, 4, 5, seed=10)
    none = f_divergence(p, q, divergence, reduction="none")
    assert none.shape == (2, 3, 4)
    torch.testing.assert_close(f_divergence(p, q, divergence, reduction="mean"), none.mean())
    torch.testing.assert_close(f_divergence(p, q, divergence, reduction="sum"), none.sum())
    torch.testing.assert_close(f_divergence(p, q, divergence), none.mean())  # mean is the default
    # each row is computed on its own
    torch.testing.assert_close(none[1, 2, 3], f_divergence(p[1, 2, 3], q[1, 2, 3], divergence))
    # a single distribution (no batch dims) gives a 0-d value for every reduction
    assert f_divergence(p[0, 0, 0], q[0, 0, 0], divergence, reduction="none").shape == ()


def test_distillation_loss_applies_log_softmax():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    teacher = _random_log_probs(6, 4, seed=12)
    for divergence in DIVERGENCES:
        expected = f_divergence(teacher, torch.log_softmax(logits, -1), divergence, reduction="none")
        torch.testing.assert_close(distillation_loss(logits, teacher, divergence, reduction="none"), expected)
        # invariant to a per-row shift of the logits
        torch.testing.assert_close(distillation_loss(logits + 3.0, teacher, divergence, reduction="none"), expected)
    # default: forward KL = cross-entropy to the soft labels minus the teacher's entropy
    ce = -(teacher.exp() * torch.log_softmax(logits, -1)).sum(-1)
    entropy = -(teacher.exp() * teacher).sum(-1)
    torch.testing.assert_close(distillation_loss(logits, teacher), (ce - entropy).mean())


# --------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_sequence_sum_over_steps(divergence):
    teacher = _random_log_probs(3, 4, 6, seed=13)
    student = _random_log_probs(3, 4, 6, seed=14)
    steps = f_divergence(teacher, student, divergence, reduction="none")  # (3, 4)
    per_sequence = sequence_f_divergence(teacher, student, divergence, reduction="none")
    assert per_sequence.shape == (3,)
    torch.testing.assert_close(per_sequence, steps.sum(-1))
    torch.testing.assert_close(sequence_f_divergence(teacher, student, divergence), steps.sum(-1).mean())
    torch.testing.assert_close(sequence_f_divergence(teacher, student, divergence, reduction="sum"), steps.sum())


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_sequence_mask_excludes_steps(divergence):
    teacher = _random_log_probs(2, 5, 4, seed=15)
    student = _random_log_probs(2, 5, 4, seed=16)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]])
    steps = f_divergence(teacher, student, divergence, reduction="none")
    expected = (steps * mask).sum(-1)
    for m in (mask, mask.bool(), mask.double()):
        torch.testing.assert_close(sequence_f_divergence(teacher, student, divergence, m, reduction="none"), expected)
    assert sequence_f_divergence(teacher, student, divergence, mask, reduction="none")[1] == 0.0  # fully padded


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_padded_sequence_equals_unpadded(divergence):
    lengths, vocab = (3, 5), 4
    t_len = max(lengths)
    g = torch.Generator().manual_seed(17)
    teachers = [_random_log_probs(n, vocab, seed=20 + i) for i, n in enumerate(lengths)]
    logits = [torch.randn(n, vocab, generator=g, dtype=torch.float64).requires_grad_(True) for n in lengths]

    # unpadded: one sequence at a time
    unpadded = torch.stack(
        [
            sequence_f_divergence(t[None], torch.log_softmax(z, -1)[None], divergence, reduction="sum")
            for t, z in zip(teachers, logits)
        ]
    )
    unpadded.sum().backward()
    grads = [z.grad.clone() for z in logits]
    for z in logits:
        z.grad = None

    # padded batch, the padding filled with garbage (NaN, +inf, -inf, unnormalised)
    garbage = torch.tensor([math.nan, math.inf, -math.inf, 7.0], dtype=torch.float64)

    def pad(rows):
        return torch.cat([rows, garbage.expand(t_len - len(rows), vocab)])

    teacher_batch = torch.stack([pad(t) for t in teachers])
    student_batch = torch.stack([pad(torch.log_softmax(z, -1)) for z in logits])
    mask = torch.arange(t_len)[None, :] < torch.tensor(lengths)[:, None]
    padded = sequence_f_divergence(teacher_batch, student_batch, divergence, mask, reduction="none")
    torch.testing.assert_close(padded, unpadded.detach())
    padded.sum().backward()
    for z, grad in zip(logits, grads):
        assert torch.isfinite(z.grad).all()
        torch.testing.assert_close(z.grad, grad)


def _toy_autoregressive(seed):
    """A 2-step autoregressive model over a vocabulary of 3: p(y1) (3,) and p(y2 | y1) (3, 3)."""
    g = torch.Generator().manual_seed(seed)
    first = torch.softmax(torch.randn(3, generator=g, dtype=torch.float64), -1)
    second = torch.softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), -1)
    return first, second


def _stepwise_inputs(first, second):
    """One sequence per prefix y1: step 1 is p(y1), step 2 is p(. | y1) -> log-probs (3, 2, 3)."""
    return torch.stack([first.expand(3, 3), second], dim=1).log()


def test_forward_kl_chain_rule_on_toy_autoregressive_model():
    (p1, p2), (q1, q2) = _toy_autoregressive(30), _toy_autoregressive(31)
    joint_p = p1[:, None] * p2  # P(y1, y2), all 9 sequences
    joint_q = q1[:, None] * q2
    exact = (joint_p * (joint_p.log() - joint_q.log())).sum()  # sequence-level KL(P || Q)
    per_prefix = sequence_f_divergence(
        _stepwise_inputs(p1, p2), _stepwise_inputs(q1, q2), "forward_kl", reduction="none"
    )
    # expectation of the step-wise sums over the teacher's prefixes y1 ~ p(y1)
    torch.testing.assert_close((p1 * per_prefix).sum(), exact, rtol=1e-12, atol=1e-14)
    # ... and the reverse KL over the student's prefixes
    exact_reverse = (joint_q * (joint_q.log() - joint_p.log())).sum()
    per_prefix_rev = sequence_f_divergence(
        _stepwise_inputs(p1, p2), _stepwise_inputs(q1, q2), "reverse_kl", reduction="none"
    )
    torch.testing.assert_close((q1 * per_prefix_rev).sum(), exact_reverse, rtol=1e-12, atol=1e-14)


def test_stepwise_tv_upper_bounds_sequence_tv():
    for seed in range(10):
        (p1, p2), (q1, q2) = _toy_autoregressive(2 * seed + 40), _toy_autoregressive(2 * seed + 41)
        exact = 0.5 * (p1[:, None] * p2 - q1[:, None] * q2).abs().sum()
        per_prefix = sequence_f_divergence(_stepwise_inputs(p1, p2), _stepwise_inputs(q1, q2), "tv", reduction="none")
        assert exact <= (p1 * per_prefix).sum() + 1e-12  # teacher prefixes
        assert exact <= (q1 * per_prefix).sum() + 1e-12  # student prefixes


# --------------------------------------------------------------------------- errors


def test_errors_bad_divergence_and_reduction():
    p = _random_log_probs(2, 3)
    with pytest.raises(ValueError, match="divergence must be one of"):
        f_divergence(p, p, "kl")
    with pytest.raises(TypeError, match="divergence must be a str"):
        f_divergence(p, p, 1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        f_divergence(p, p, "tv", reduction="batchmean")
    with pytest.raises(ValueError, match="divergence must be one of"):
        sequence_f_divergence(p[None], p[None], "JS")
    with pytest.raises(ValueError, match="divergence must be one of"):
        distillation_loss(p, p, "tvd")


def test_errors_bad_tensors():
    p = _random_log_probs(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        f_divergence(p, _random_log_probs(2, 4), "js")
    with pytest.raises(TypeError, match="teacher_log_probs must be a torch.Tensor"):
        f_divergence(p.tolist(), p, "js")
    with pytest.raises(TypeError, match="student_log_probs must be a torch.Tensor"):
        f_divergence(p, p.numpy(), "js")
    with pytest.raises(TypeError, match="floating-point"):
        f_divergence(torch.zeros(2, 3, dtype=torch.long), p, "js")
    with pytest.raises(TypeError, match="student_logits must be a torch.Tensor"):
        distillation_loss([[0.0, 1.0, 2.0]], p[:1], "js")
    with pytest.raises(ValueError, match="student_logits contains NaN"):
        distillation_loss(torch.tensor([[0.0, math.nan, 1.0]], dtype=torch.float64), p[:1])
    with pytest.raises(ValueError, match="entirely -inf"):
        distillation_loss(torch.full((1, 3), -math.inf, dtype=torch.float64), p[:1])


def test_minus_inf_logits_mask_classes():
    teacher = _log([[0.5, 0.5, 0.0]])
    logits = torch.tensor([[0.0, math.log(3.0), -math.inf]], dtype=torch.float64, requires_grad=True)
    # student q = [1/4, 3/4, 0]: KL(p || q) = 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4)
    loss = distillation_loss(logits, teacher, "forward_kl")
    assert loss.item() == pytest.approx(0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0), rel=1e-12)
    for divergence in DIVERGENCES:
        logits.grad = None
        loss = distillation_loss(logits, teacher, divergence)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), divergence


def test_errors_unnormalised_or_invalid_log_probs():
    p = _random_log_probs(2, 3)
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="teacher_log_probs must hold normalised log-probabilities.*log_softmax"):
        f_divergence(logits, p, "forward_kl")
    with pytest.raises(ValueError, match="student_log_probs must hold normalised"):
        f_divergence(p, p.exp(), "forward_kl")  # probabilities instead of log-probabilities
    with pytest.raises(ValueError, match="contains NaN"):
        f_divergence(torch.full((1, 3), math.nan, dtype=torch.float64), p[:1], "tv")
    with pytest.raises(ValueError, match=r"contains \+inf"):
        f_divergence(p[:1], torch.tensor([[math.inf, 0.0, 0.0]], dtype=torch.float64), "tv")


def test_errors_sequences():
    t = _random_log_probs(2, 3, 4)
    with pytest.raises(ValueError, match=r"\(batch, length, vocab\)"):
        sequence_f_divergence(t[0], t[0], "js")
    with pytest.raises(ValueError, match="mask must have shape"):
        sequence_f_divergence(t, t, "js", mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1"):
        sequence_f_divergence(t, t, "js", mask=torch.full((2, 3), 2))
    with pytest.raises(TypeError, match="mask must be None or a torch.Tensor"):
        sequence_f_divergence(t, t, "js", mask=[[1, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="same shape"):
        sequence_f_divergence(t, _random_log_probs(2, 4, 4), "js")


def test_divergence_names():
    assert DIVERGENCES == ("forward_kl", "reverse_kl", "js", "tv")
