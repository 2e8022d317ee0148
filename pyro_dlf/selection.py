r"""Choosing the student's body by held-out scores of the teachers' values, and the default number of
factors from the teachers' spread (no labels, no test data).

No single body suits every ensemble: a 1 × 50 student cannot follow teachers
whose mean is rough, and a 2 × 100 one overfits a small smooth set. The DLF
is a probability model of the teachers, so bodies can be compared the way a
statistician compares models: by how well each predicts teacher values it
has not seen. The design points are split once (seeded) into a fitting part
and a validation part; every candidate body is distilled on the fitting part
and scored by the exact log marginal likelihood of each teacher's values at
the validation points (mathematics §3: ``log N(f_i; μ, ΦΦ^T + σ_f² I)`` there),
per observed scalar. The test data never enter.

For regression teachers with one noise variance each, the score is instead
the *ensemble-predictive log score*: teacher ``i`` with noise variance
``σ²_{ε,i}`` generates ``y ~ N(f_i(x), σ²_{ε,i})`` at each validation point,
and each candidate is scored by the expected log density of that ``y`` under
its own posterior predictive (:meth:`~pyro_dlf.student.Student.predictive_mixture`),
``E_{y∼N(f_ij, σ²_{ε,i})} log p_student(y | x_j)``, by Gauss–Hermite
quadrature (:func:`predictive_log_score`). Up to a constant it is minus the
cross-entropy from the ensemble's predictive to the student's -- what a
regression student is for. The joint likelihood of the teacher values, by
contrast, is dominated by how tightly the low-rank covariance fits the
teachers' small in-sample disagreement, and can prefer a small body even where
a larger one fits the teachers' mean clearly better (the UCI benchmark's report
compares the two scores).

The same split also chooses how long to train (early stopping on held-out
design points). Teachers that have partly memorized their training labels
carry that memorization in their values at their own training inputs, and a
student trained long enough learns it there without its carrying to new
inputs: it then matches the ensemble at the design points far more closely
than at new inputs. A shorter schedule -- a fraction ``ℓ`` of the MMD steps and
of the EM iterations, from :data:`TRAINING_FAMILY` -- is a candidate like a
smaller body, scored by the same held-out criterion.

Decision rule (the one-standard-error rule of Breiman et al., 1984): the
simplest candidate -- fewest parameters, then shortest training -- whose mean
validation score is within one standard error of the best one's, the
standard error taken over teachers of the paired per-teacher differences. A
larger body or a longer schedule must beat the simpler one by more than the
teachers' own variation to be chosen. After the choice the caller refits on
all design points. A comparison needs at least :data:`MIN_VALIDATION_POINTS` held-out and
:data:`MIN_FITTING_POINTS` fitting design points (:func:`minimum_design_points`: 23 at the
default ``validation_fraction=0.2``); ``distill`` refuses fewer, naming the option.

``distill(num_factors="auto")`` (the default) takes the number of factors from the teachers'
values alone: the smallest ``q`` whose leading principal directions of the teachers' centred
deviations explain :data:`FACTOR_SHARE` of their spread, clipped to the identified range and to
:data:`FACTOR_CAP` (:func:`choose_num_factors` gives the reasons).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pyro_dlf._progress import progress_bar

__all__ = ["BODY_FAMILY", "TRAINING_FAMILY", "MIN_VALIDATION_POINTS", "MIN_FITTING_POINTS", "FACTOR_SHARE", "FACTOR_CAP",
           "BodySelection", "FactorChoice", "split_design", "select_hidden", "predictive_log_score", "minimum_design_points",
           "check_selection_size", "deviation_gram", "factor_limit", "choose_num_factors"]

#: The documented family of default MLP bodies searched by ``distill(hidden="auto")``:
#: one or two hidden layers of 50 or 100 units (at most the teachers' 2 × 100).
BODY_FAMILY: tuple[tuple[int, ...], ...] = ((50,), (100,), (50, 50), (100, 100))

#: The training lengths compared by ``distill(training_length="auto")``: fractions of the
#: caller's ``mmd_steps`` and ``num_iterations`` (the whole schedule, about a third, about a seventh).
TRAINING_FAMILY: tuple[float, ...] = (1.0, 0.35, 0.15)

#: Held-out design points a comparison of bodies (or training lengths) needs at least: a teacher's score
#: is its mean over them, and fewer than five inputs say more about those points than about the function.
MIN_VALIDATION_POINTS = 5

#: Design points the fitting part keeps at least (as many as the held-out part needs).
MIN_FITTING_POINTS = 5

#: The share of the teachers' spread that ``num_factors="auto"`` asks the factors to explain (see :func:`choose_num_factors`).
FACTOR_SHARE = 0.9

#: The most factors ``num_factors="auto"`` chooses (see :func:`choose_num_factors`).
FACTOR_CAP = 10


@dataclass
class BodySelection:
    """What :func:`select_hidden` compared and chose.

    :ivar candidates: the hidden widths of each candidate, in the order tried
        (each body once per training length).
    :ivar parameters: the student's parameter count for each.
    :ivar validation_nll: mean over teachers of the negative log marginal
        likelihood per scalar at the validation points.
    :ivar standard_error: standard error of each candidate's difference to the
        best candidate (0 for the best itself).
    :ivar chosen: the selected widths.
    :ivar validation_points: number of held-out design points.
    :ivar lengths: each candidate's training length (fraction of the schedule).
    :ivar chosen_length: the selected training length.
    """

    candidates: list[tuple[int, ...]]
    parameters: list[int]
    validation_nll: list[float]
    standard_error: list[float]
    chosen: tuple[int, ...]
    validation_points: int
    lengths: list[float] = field(default_factory=list)
    chosen_length: float = 1.0
    rule: str = field(default="fewest parameters, then shortest training, within one standard error of the best")

    def as_dict(self) -> dict:
        return {"candidates": [list(c) for c in self.candidates], "parameters": self.parameters,
                "validation_nll": self.validation_nll, "standard_error": self.standard_error,
                "chosen": list(self.chosen), "validation_points": self.validation_points,
                "lengths": self.lengths, "chosen_length": self.chosen_length, "rule": self.rule}


@dataclass
class FactorChoice:
    """What ``distill(num_factors="auto")`` chose, and from what (:func:`choose_num_factors`).

    :ivar num_factors: the chosen ``q``.
    :ivar explained: the cumulative share of the teachers' spread explained by the leading
        ``1, 2, …`` principal directions of their centred deviations.
    :ivar share: the share asked for (:data:`FACTOR_SHARE`).
    :ivar cap: the most factors the rule chooses (:data:`FACTOR_CAP`).
    :ivar limit: the identified range's upper end for these teachers (``n − 2``; separable
        multivariate ``(n − 1)·c′ − 1``, ``c′ = c − 1`` for centred logits).
    :ivar rule: the rule in words.
    """

    num_factors: int
    explained: list[float]
    share: float
    cap: int
    limit: int
    rule: str = field(default="smallest q whose leading principal directions of the teachers' centred deviations explain "
                              "at least the share of their spread, clipped to [1, min(cap, limit)]")

    def as_dict(self) -> dict:
        return {"num_factors": self.num_factors, "explained": self.explained, "share": self.share, "cap": self.cap,
                "limit": self.limit, "rule": self.rule}


def factor_limit(num_teachers: int, num_outputs: Optional[int] = None, covariance: Optional[str] = "separable") -> int:
    """The largest ``q`` that ``num_factors="auto"`` considers: one below the number of directions the
    teachers span (``n − 1``, separable multivariate ``(n − 1)·c``; see
    :func:`pyro_dlf._validation.check_num_factors`), and at least 1."""
    per_teacher = 1 if num_outputs is None or covariance == "full" else num_outputs
    return max(1, (num_teachers - 1) * per_teacher - 1)


def deviation_gram(f: Tensor, observed: Optional[Tensor] = None, separable: bool = False) -> Tensor:
    r"""The Gram matrix ``D D^T`` (float64) of the teachers' deviations from their mean at each design point.

    ``D`` has one row per teacher (its deviations at every point and output, flattened), or with
    ``separable`` one row per (teacher, output): the vectors over design points whose span is
    ``col(Φ)`` in the separable model. With an ``observed`` mask ``(n, m)`` the mean runs over the
    observed teachers at each point and unobserved entries count as zero deviation. Its nonzero
    eigenvalues are the squared singular values of ``D``. A sum over design points, so batches of
    points may be added (a stream).

    :param f: ``(n, m)`` or ``(n, m, c)`` teacher values (classification logits centred per input by the caller).
    """
    values = f.detach().double()
    if observed is not None:
        keep = observed.to(values.device)
        keep = keep if values.dim() == 2 else keep.unsqueeze(-1).expand_as(values)
        count = keep.sum(0, keepdim=True).clamp_min(1)
        centre = torch.where(keep, values, torch.zeros_like(values)).sum(0, keepdim=True) / count
        deviation = torch.where(keep, values - centre, torch.zeros_like(values))
    else:
        deviation = values - values.mean(0, keepdim=True)
    if separable and deviation.dim() == 3:
        rows = deviation.permute(0, 2, 1).reshape(-1, deviation.shape[1])  # (n·c, m)
    else:
        rows = deviation.reshape(deviation.shape[0], -1)
    return rows @ rows.T


def choose_num_factors(gram: Tensor, limit: int, share: float = FACTOR_SHARE, cap: int = FACTOR_CAP) -> FactorChoice:
    r"""The label-free default number of factors: the smallest ``q`` whose leading principal directions of
    the teachers' centred deviations explain at least ``share`` of their spread, clipped to
    ``[1, min(cap, limit)]``.

    Only the teachers' values at the design points enter (through ``gram``, :func:`deviation_gram`):
    no labels, no test data. ``λ_1 ≥ λ_2 ≥ …`` are its eigenvalues, the spread of the teachers
    along each principal direction of their deviations ``f_i − ar f``; ``q`` is the smallest
    ``k`` with ``Σ_{a≤k} λ_a ≥ share · Σ_a λ_a``.

    Why these numbers:

    * ``share = 0.9``. The student's epistemic variance is what its factors carry: spread the factors
      leave out goes to the nugget ``σ_f²``, which the predictive leaves out by default, so it is lost
      -- the variance reduction that distillation of uncertainty sets out to avoid (mathematics §7, ideal
      ratio 1). That asks for a high share. But not one near 1: each teacher's disagreement that is
      independent from point to point (memorized label noise, rounding) spreads evenly over all
      ``n − 1`` directions, so a share near 1 would demand nearly every direction and fit the
      particular teachers' noise -- exactly what the nugget is for -- and the trailing directions are
      estimated from the same ``n`` teachers with the largest relative error. 0.9 is the upper end of
      the usual 70--90 % (Jolliffe, *Principal Component Analysis*, 2002, §6.1.1): at most a tenth of
      the spread goes to the nugget.
    * ``limit``: ``n`` teachers span at most ``n − 1`` directions around their mean (mathematics §2). With
      ``q = n − 1`` the factors reproduce the teachers' sample covariance exactly and the nugget's
      maximum-likelihood estimate falls to its floor (a boundary, Heywood-type fit), so the rule stays
      at ``q ≤ n − 2`` (mathematics §1: ``q ≤ n − 2`` in practice); separable multivariate, whose teachers
      span ``(n − 1)·c′`` directions of ``col(Φ)`` (``c′`` free outputs: ``c − 1`` for logits centred
      per input), at ``(n − 1)·c′ − 1``. At least 1.
    * ``cap = 10``, the paper's ``q`` for its largest ensembles (50 teachers on UCI; 8 on CIFAR-10).
      Where ten directions do not reach the share, the rest of the spread is spread thinly over many
      directions -- per-point disagreement that low-rank factors do not represent and the nugget
      takes -- and each further factor would mostly fit those particular teachers.

    Pass an int ``num_factors`` to override it; the choice is recorded as ``student.num_factors_choice``.

    :param gram: ``D D^T`` of the centred deviations (float64, symmetric).
    :param limit: the identified range's upper end (:func:`factor_limit`).
    """
    eigenvalues = torch.linalg.eigvalsh(gram.double()).flip(0).clamp_min(0)
    total = float(eigenvalues.sum())
    if not total > 0:
        raise ValueError("teacher_outputs: the teachers show no spread around their mean at any design point (they give the "
                         "same values, or with observed= no point is observed by two of them), so num_factors='auto' has "
                         "nothing to measure; check that the teachers differ and overlap, or pass an int num_factors")
    explained = (eigenvalues.cumsum(0) / total).tolist()
    # The smallest k reaching the share (a hair of tolerance for the rounding of the cumulative sum).
    q = next((k + 1 for k, e in enumerate(explained) if e >= share - 1e-12), len(explained))
    q = max(1, min(q, cap, limit))
    return FactorChoice(q, [float(e) for e in explained[:max(limit, cap) + 1]], share, cap, limit)


def _validation_size(num_points: int, validation_fraction: float) -> int:
    return max(1, int(round(validation_fraction * num_points)))


def minimum_design_points(validation_fraction: float) -> int:
    """The fewest design points whose seeded split (:func:`split_design`) holds out at least
    :data:`MIN_VALIDATION_POINTS` and keeps at least :data:`MIN_FITTING_POINTS` to fit."""
    if not (0 < validation_fraction < 1):
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    # round(v·m) >= 5 and m − round(v·m) >= 5 first hold near max(4.5/v, 4.5/(1 − v)); walk up from just below.
    m = max(MIN_VALIDATION_POINTS + MIN_FITTING_POINTS, int(max((MIN_VALIDATION_POINTS - 0.5) / validation_fraction,
                                                                (MIN_FITTING_POINTS - 0.5) / (1 - validation_fraction))) - 2)
    while _validation_size(m, validation_fraction) < MIN_VALIDATION_POINTS or m - _validation_size(m, validation_fraction) < MIN_FITTING_POINTS:
        m += 1
    return m


def check_selection_size(num_points: int, validation_fraction: float, name: str, value: object, fix: str) -> None:
    """Enough design points for a held-out comparison; else one error naming the option (``name=value``) and ``fix``."""
    need = minimum_design_points(validation_fraction)
    if num_points < need:
        held = _validation_size(need, validation_fraction)
        raise ValueError(f"{name}={value!r} compares fits on held-out design points and needs at least {need} of them with "
                         f"validation_fraction={validation_fraction:g} ({held} held out, {need - held} to fit); x_design has "
                         f"{num_points}: {fix}, or give more design points")


def split_design(num_points: int, validation_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(fit, validation)`` of a seeded random split of the design points.

    The validation part has ``round(validation_fraction · m)`` points, at least
    one, and leaves at least two for fitting.
    """
    if not (0 < validation_fraction < 1):
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    size = _validation_size(num_points, validation_fraction)
    if num_points - size < 2:
        raise ValueError(f"x_design has {num_points} points: too few to hold out {size} for choosing the body; give more design points or a fixed hidden=")
    perm = torch.randperm(num_points, generator=torch.Generator().manual_seed(seed))
    return perm[size:], perm[:size]


def select_hidden(
    x: Tensor,
    f: Tensor,
    candidates: Sequence[Sequence[int]],
    fit: Callable[[Tensor, Tensor, tuple[int, ...], Optional[Tensor], Tensor], object],
    score: Callable[[object, Tensor, Tensor, Optional[Tensor]], Tensor],
    *,
    validation_fraction: float = 0.2,
    seed: int = 0,
    observed: Optional[Tensor] = None,
    lengths: Sequence[float] = (1.0,),
    progress: bool = False,
) -> BodySelection:
    """Compare ``candidates`` by a held-out score of the teachers' values (see the module docstring).

    :param x: design points ``(m, d)``.
    :param f: teacher values ``(n, m)`` or ``(n, m, c)`` as the caller fits them.
    :param fit: ``fit(x_fit, f_fit, hidden, observed_fit, fit_indices, length)`` returns a fitted
        student (the indices let the caller slice anything else given per design point; ``length``
        is the fraction of the training schedule).
    :param score: ``score(student, x_val, f_val, observed_val)`` returns each
        teacher's score per scalar at the validation points (higher is better: a log
        marginal likelihood or :func:`predictive_log_score`),
        ``(n,)``; NaN for a teacher with no observed validation value (left out).
    :param observed: optional ``(n, m)`` mask of observed teacher values, split with the points.
    :param lengths: training lengths to try with every body (fractions in ``(0, 1]``).
    :param progress: show a bar over the candidate fits (one tick per candidate; ``TQDM_DISABLE`` hides it).
    """
    bodies = [tuple(int(w) for w in c) for c in candidates]
    if not bodies:
        raise ValueError("hidden: give at least one candidate body, e.g. [(50,), (100, 100)]")
    lengths = [float(v) for v in lengths]
    if not lengths:
        raise ValueError("training_length: give at least one fraction of the schedule, e.g. 1.0")
    pairs = [(body, length) for body in bodies for length in lengths]
    candidates = [body for body, _ in pairs]
    fit_idx, val_idx = split_design(x.shape[0], validation_fraction, seed)
    scores, sizes = [], []
    part = (lambda idx: None) if observed is None else (lambda idx: observed[:, idx])  # noqa: E731
    for hidden, length in progress_bar(pairs, desc="body selection", enabled=progress, total=len(pairs)):
        student = fit(x[fit_idx], f[:, fit_idx], hidden, part(fit_idx), fit_idx, length)
        scores.append(score(student, x[val_idx], f[:, val_idx], part(val_idx)).double())
        sizes.append(sum(p.numel() for p in student.parameters()))
    table = torch.stack(scores)  # (candidates, teachers)
    table = table[:, ~torch.isnan(table).any(0)]
    if table.shape[1] == 0:
        raise ValueError("observed: no teacher is observed at the validation points; give more design points or a fixed hidden=")
    means = table.mean(1)
    best = int(means.argmax())
    n = table.shape[1]
    differences = table[best] - table
    se = differences.std(1) / math.sqrt(n) if n > 1 else torch.zeros_like(means)
    within = [i for i in range(len(candidates)) if float(means[best] - means[i]) <= float(se[i])]
    chosen = min(within, key=lambda i: (sizes[i], pairs[i][1], i))
    return BodySelection(candidates, sizes, [float(-v) for v in means], [float(v) for v in se], candidates[chosen],
                         int(val_idx.numel()), [length for _, length in pairs], pairs[chosen][1])


def predictive_log_score(student, x: Tensor, f: Tensor, noise_variances: Tensor, observed: Optional[Tensor] = None,
                         num_nodes: int = 16) -> Tensor:
    r"""Each teacher's expected log predictive density of its own noisy outputs, per point, ``(n,)``.

    .. math:: s_i = \frac{1}{|O_i|} \sum_{j \in O_i} \mathbb E_{y \sim N(f_{ij}, σ^2_{ε,i})}
              \log p_{\text{student}}(y \mid x_j),

    with ``p_student`` the student's predictive mixture and the expectation by
    ``num_nodes``-point Gauss–Hermite quadrature (exact for polynomials of
    degree ``2·num_nodes − 1`` in ``y``). ``O_i``: the points where teacher ``i``
    is observed (all without ``observed``); NaN for a teacher observed nowhere.
    """
    means, variances = student.predictive_mixture(x)  # (K, m) equal-weight components
    means, variances = means.double(), variances.double()
    nodes, weights = np.polynomial.hermite.hermgauss(num_nodes)
    nodes = torch.as_tensor(nodes, dtype=torch.float64, device=means.device)
    weights = torch.as_tensor(weights, dtype=torch.float64, device=means.device) / math.sqrt(math.pi)
    f = f.double().to(means.device)
    sd = noise_variances.double().to(means.device).sqrt()
    num_teachers = f.shape[0]
    if observed is None:
        teacher = torch.arange(num_teachers, device=means.device).repeat_interleave(f.shape[1])
        point = torch.arange(f.shape[1], device=means.device).repeat(num_teachers)
    else:
        # Only the observed (teacher, point) pairs: a held-out mask keeps about a tenth of them.
        teacher, point = observed.to(means.device).nonzero(as_tuple=True)
    total = torch.zeros(num_teachers, dtype=torch.float64, device=means.device)
    # Bounded memory: K x chunk x nodes of at most 2^23 doubles (64 MiB) per step.
    chunk = max(1, (1 << 23) // (means.shape[0] * num_nodes))
    for start in range(0, teacher.numel(), chunk):
        t, j = teacher[start:start + chunk], point[start:start + chunk]
        y = f[t, j].unsqueeze(-1) + math.sqrt(2.0) * sd[t].unsqueeze(-1) * nodes  # (b, nodes)
        m_, v_ = means[:, j, None], variances[:, j, None]  # (K, b, 1)
        log_components = -0.5 * ((y - m_) ** 2 / v_ + torch.log(2 * math.pi * v_))
        log_density = torch.logsumexp(log_components, 0) - math.log(means.shape[0])  # the mixture, (b, nodes)
        total.index_add_(0, t, (log_density * weights).sum(-1))
    counts = torch.bincount(teacher, minlength=num_teachers).to(total)
    score = total / counts.clamp_min(1)
    return torch.where(counts > 0, score, torch.full_like(score, float("nan")))
