r"""Choosing a design without labels or test data (mathematics §9.2).

The data rows are split once (seeded) into a fitting part and a held-out part.
Each candidate design is built from the fitting part alone, the teachers are
evaluated there and a student is fitted to them. The held-out rows give three
families of points no candidate saw:

* **in range**: the held-out rows themselves;
* **around**: one Gaussian perturbation of each (Scott's bandwidth);
* **beyond**: one outward probe of each with reach :data:`EVALUATION_REACH`
  (the shell out to 1.5 times each row's distance from the centroid, where
  the ``"beyond"`` design places its probes).

A candidate's score is the mean over the three families of the negative log
density, per value, of the teachers' values there under the student's process
(the DLF marginal likelihood, mathematics §3). The three families weigh the
data, their neighbourhood and the region beyond them equally: a design that
reaches beyond the data wins only if it does not cost more in range than it
gains beyond. The lowest score is chosen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from pyro_dlf._progress import progress_bar
from pyro_dlf._validation import MAX_SEED, check_int
from pyro_dlf.design.sets import build_design
from pyro_dlf.design.tabular import gaussian_perturbation, outward_probes

__all__ = ["DESIGN_CANDIDATES", "EVALUATION_REACH", "FAMILIES", "DesignChoice", "choose_design", "design_points", "held_out_score"]

#: The candidates ``design="auto"`` compares: (name, reach of the outward probes or ``None``, distance feature).
#: The distance feature is compared too: it lets the loadings and the nugget grow away from the data, which some
#: teachers' disagreement does and some does not (mathematics §9.3–9.4); on the rows alone it has nothing to learn from.
DESIGN_CANDIDATES: tuple[tuple[str, Optional[float], bool], ...] = (
    ("given", None, False), ("around", None, False), ("around", None, True), ("beyond", 0.5, False), ("beyond", 0.5, True))

#: How far beyond the held-out rows the "beyond" family reaches (a share of each row's distance from the centroid):
#: the reach of the "beyond" design, so that a design is judged where it asks the student to follow the teachers.
EVALUATION_REACH = 0.5

#: The held-out families a candidate is scored on.
FAMILIES = ("in_range", "around", "beyond")


@dataclass
class DesignChoice:
    """What ``distill(design=...)`` used, and why.

    :ivar design: the design set of the final fit (a name of :data:`~pyro_dlf.design.sets.DESIGNS`, or ``"custom"``).
    :ivar reach: the outward probes' reach of ``"beyond"`` (else ``None``).
    :ivar reason: one sentence: chosen by the held-out score, asked for, or why no choice was possible.
    :ivar scores: per candidate ``{"design", "reach", "distance_feature", "in_range", "around", "beyond", "score"}``
        (empty without a choice).
    :ivar num_data_points: the data rows the design was built from.
    :ivar num_design_points: the design points of the final fit.
    :ivar distance_feature: whether the student's loadings read the distance from the data (mathematics §9.3).
    :ivar seed: the seed of the design's random draws (:meth:`points` rebuilds the design from it).
    """

    design: str
    reach: Optional[float]
    reason: str
    scores: list = field(default_factory=list)
    num_data_points: int = 0
    num_design_points: int = 0
    distance_feature: bool = False
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def points(self, x: Tensor) -> Tensor:
        """The design points of the fit, rebuilt from its data rows ``x`` (a named design only): the draws use
        ``seed + 1`` (the held-out split of a choice used ``seed``). Exact for the same ``x``, dtype and device."""
        if self.design == "custom":
            raise ValueError("points: a callable design is not recorded; keep the points it returned")
        return design_points(x, self.design, self.reach, self.seed)


def design_points(x: Tensor, name: str, reach: Optional[float], seed: int) -> Tensor:
    """The named design built from ``x`` with the draws of ``seed`` (what :func:`pyro_dlf.distill` fits)."""
    seed = check_int(seed, "seed", 0, maximum=MAX_SEED - 1)
    return build_design(x, name, reach=0.5 if reach is None else reach, generator=torch.Generator().manual_seed(seed + 1))


def held_out_score(student, points: dict[str, Tensor], values: dict[str, Tensor]) -> dict[str, float]:
    """Negative log density per value of the teachers' ``values[k]`` at ``points[k]`` under ``student``'s process,
    for each family ``k``, and their mean (``"score"``). Logits are centred per input first when the student fits
    centred logits; a value is one scalar (one output of one teacher at one point)."""
    dlf = student.dlf
    weight = dlf.loading_head.weight
    out = {}
    for family, x in points.items():
        f = values[family].to(dtype=weight.dtype, device=weight.device)
        if getattr(student, "centered_logits", False):
            f = f - f.mean(-1, keepdim=True)  # the student fits centred logits: score those
        log_density = dlf.log_marginal_likelihood(x.to(dtype=weight.dtype, device=weight.device), f)
        out[family] = float(-log_density.sum() / f.numel())
    out["score"] = sum(out[k] for k in points) / len(points)
    return out


def choose_design(x: Tensor, teachers: Callable[[Tensor], Tensor], fit: Callable[[Tensor, Tensor, Tensor, bool], object], *,
                  candidates: Sequence[tuple[str, Optional[float], bool]] = DESIGN_CANDIDATES, validation_fraction: float = 0.2,
                  seed: int = 0, progress: bool = False) -> DesignChoice:
    """Choose among ``candidates`` by the held-out score (module docstring).

    :param x: the data rows ``(n, D)`` (original units).
    :param teachers: maps inputs ``(k, D)`` to the teachers' values ``(n_teachers, k[, c])``.
    :param fit: ``fit(x_design, f_design, data_rows, distance_feature)`` returns a :class:`~pyro_dlf.student.Student`
        fitted to a candidate's design, with the distance feature (measured from ``data_rows``) or without.
    :param validation_fraction: the share of rows held out (the caller makes sure both parts keep at least 5 rows:
        :func:`pyro_dlf.selection.minimum_design_points`).
    :param seed: the split and every draw of points.
    :returns: the choice; the caller refits on all rows with the chosen design.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    cut = max(5, int(round(validation_fraction * x.shape[0])))
    held, kept = x[order[:cut]], x[order[cut:]]
    # Standardized, and with the bandwidth, as the candidates' designs are: by the rows they are built from.
    points = {"in_range": held, "around": gaussian_perturbation(held, generator=generator, reference=kept),
              "beyond": outward_probes(held, reach=EVALUATION_REACH, generator=generator, reference=kept)}
    values = {k: teachers(v) for k, v in points.items()}
    scores = []
    for name, reach, distance in progress_bar(list(candidates), desc="design", enabled=progress):
        design = design_points(kept, name, reach, seed)
        student = fit(design, teachers(design), kept, distance)
        scores.append({"design": name, "reach": reach, "distance_feature": distance, **held_out_score(student, points, values)})
    best = min(scores, key=lambda s: s["score"])
    return DesignChoice(best["design"], best["reach"], "chosen by the teachers' held-out values in range, around and beyond the data",
                        scores, num_data_points=int(x.shape[0]), distance_feature=best["distance_feature"], seed=seed)
