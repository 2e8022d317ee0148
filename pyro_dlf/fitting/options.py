r"""The options of :func:`pyro_dlf.distill`, checked once and grouped by what they control.

:func:`check_options` turns the keyword arguments into one frozen :class:`DistillOptions` before any data are
read; every later part of the fit (the design, the body choice, the noise law, EM) reads it and checks nothing
again. Candidate fits of a choice are the same options with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from pyro_dlf._validation import (MAX_SEED, check_choice, check_design_option, check_device, check_flag, check_flag_or_auto,
                                  check_float_dtype, check_int, check_loading_hidden, check_num_factors_option, check_real,
                                  check_training_length, check_widths)
from pyro_dlf.design.sets import DESIGNS
from pyro_dlf.models.deep_latent_factor import ACTIVATIONS
from pyro_dlf.selection import BODY_FAMILY, TRAINING_FAMILY

__all__ = ["DistillOptions", "check_options", "ARGUMENTS", "ABLATION_SWITCHES"]


@dataclass(frozen=True)
class DistillOptions:
    r"""Every data-free option of one :func:`~pyro_dlf.distill` call, checked and normalized.

    **The model.**

    :ivar num_factors: ``q``, or ``"auto"``: the smallest ``q`` whose leading principal directions of the
        teachers' centred deviations ``f_i − \bar f`` explain at least 90 % of their spread, clipped to
        ``1 ≤ q ≤ min(10, n − 2)`` (separable multivariate: ``(n − 1)·c′ − 1``, ``c′ = c − 1`` for centred
        logits) -- from the teachers' values alone (:func:`pyro_dlf.selection.choose_num_factors`; mathematics
        §2.3). An int: at most ``n − 1`` is identified (warns otherwise).
    :ivar task: ``"regression"``, ``"classification"``, or ``None`` (from the shape: ``(n, m, c)`` is logits).
    :ivar covariance: the output covariance of a multivariate student (mathematics §1.2): ``"full"`` (every
        input its own ``Φ(x) Φ(x)^T``, ``Φ(x) ∈ R^{c×q}``; the classification default) or ``"separable"``
        (``Φ(x)^T Φ(x') (L L^T)``, one class covariance shape for every input; the paper's model).
    :ivar centered_loadings: full covariance: project the loadings onto the classes' zero-sum subspace
        (``None``: when ``center_logits``).
    :ivar center_logits: classification: subtract each teacher's mean logit per input (softmax ignores it;
        mathematics §2.2).
    :ivar include_nugget: predict new teachers, the nugget ``σ_f²`` included (mathematics §1.3).
    :ivar noise_given_factors: regression with one output: let the noise law's scale follow each draw's
        factors (mathematics §6.3); ``"auto"`` adopts it when a likelihood-ratio test on the teachers' own
        noise variances rejects the i.i.d. law at 1 %; ``False`` (default) keeps the i.i.d. law of §2.4.

    **The network.**

    :ivar hidden: the default MLP body's widths, or ``None`` when bodies are compared.
    :ivar hidden_candidates: the bodies compared on held-out design points (``"auto"``:
        :data:`pyro_dlf.selection.BODY_FAMILY`), or ``None`` for one body. Each is fitted on
        ``1 − validation_fraction`` of the design points and scored at the rest (regression teachers with one
        noise variance each by the ensemble-predictive log score, others by the exact marginal likelihood); the
        smallest within one standard error of the best is refitted on all points. A comparison needs 5 held-out
        and 5 fitting points at least (:func:`pyro_dlf.selection.minimum_design_points`: 23 at the default
        ``validation_fraction``).
    :ivar hidden_given: ``hidden`` as passed (named in messages).
    :ivar loading_hidden: widths of a separate loading body, or ``None`` for one body shared by both heads.
    :ivar body: a custom body module ``(m, ...) → (m, body_features)``, or ``None``.
    :ivar body_features: its output width.
    :ivar activation: the default body's activation (:data:`pyro_dlf.models.ACTIVATIONS`).

    **The schedule.**

    :ivar num_iterations: EM iterations (mathematics §4).
    :ivar num_m_steps: gradient steps per iteration (``None``: one pass over the design points).
    :ivar batch_size: design points per minibatch.
    :ivar lr: Adam's step size, decayed geometrically to ``lr · lr_decay`` over the EM run after a linear
        warm-up over the first ``warmup`` of it (:func:`pyro_dlf.fitting.fit.scheduled_adam`).
    :ivar lr_decay: see ``lr``.
    :ivar warmup: see ``lr``.
    :ivar mmd_steps: steps of the MMD-penalized start (mathematics §5; 0: none).
    :ivar training_lengths: the fractions of the schedule compared (``"auto"``:
        :data:`pyro_dlf.selection.TRAINING_FAMILY`), or one fraction.
    :ivar training_length_given: ``training_length`` as passed (named in messages).
    :ivar validation_fraction: share of the design points held out to choose the body, the length and the design.
    :ivar mmd_penalty: the MMD start's weight ``λ`` (mathematics §5; an ablation switch, not in ``distill``).
    :ivar init: ``"mmd"`` or ``"random"`` (an ablation switch, not in ``distill``).
    :ivar estep: ``"exact"`` or ``"minibatch"``, the paper's Algorithm 1 (an ablation switch, not in ``distill``).

    **The design** (mathematics §9).

    :ivar design: with callable teachers, the design set built from the rows ``x_design``: ``"given"`` (the rows),
        ``"between"`` (plus a mixup point per row), ``"around"`` (plus a Gaussian perturbation per row), ``"beyond"``
        (plus a perturbation and an outward probe with reach 0.5 per row), a callable ``design(x, *, generator)``
        returning the points to add (e.g. :func:`pyro_dlf.design.images.augment_images`), or ``"auto"``: ``given``,
        ``around`` and ``beyond`` (with and without the distance feature) compared by the teachers' held-out values
        in range, around and beyond the rows (:func:`pyro_dlf.design.choice.choose_design`). With teacher values,
        per-point inputs or a custom body, ``"auto"`` means ``"given"``.
    :ivar distance_feature: feed the loadings the distance from the data rows (§9.3): ``True``, ``False`` or
        ``"auto"``.

    **The run.**

    :ivar teacher_batch_size: design points per call of a teacher callable.
    :ivar seed: seeds the initialization, the minibatch order and the held-out splits.
    :ivar progress: show progress bars (body selection, MMD start, EM); ``TQDM_DISABLE`` hides them too.
    :ivar device: where to fit (``None``: where ``x_design`` is); ``"cuda"`` needs ``torch.cuda.is_available()``.
    :ivar dtype: the model's dtype, ``torch.float32`` or ``torch.float64``.
    """

    num_factors: Union[int, str] = "auto"
    task: Optional[str] = None
    covariance: Optional[str] = None
    centered_loadings: Optional[bool] = None
    center_logits: bool = True
    include_nugget: bool = False
    noise_given_factors: Union[bool, str] = False
    hidden: Optional[tuple[int, ...]] = (50,)
    hidden_candidates: Optional[tuple[tuple[int, ...], ...]] = None
    hidden_given: Any = (50,)
    loading_hidden: Optional[tuple[int, ...]] = None
    body: Optional[nn.Module] = None
    body_features: Optional[int] = None
    activation: str = "ReLU"
    num_iterations: int = 100
    num_m_steps: Optional[int] = None
    batch_size: int = 256
    lr: float = 1e-2
    lr_decay: float = 0.1
    warmup: float = 0.1
    mmd_steps: int = 500
    training_lengths: tuple[float, ...] = (1.0,)
    training_length_given: Any = 1.0
    validation_fraction: float = 0.2
    mmd_penalty: float = 1.0
    init: str = "mmd"
    estep: str = "exact"
    design: Union[str, Callable] = "auto"
    distance_feature: Union[bool, str] = "auto"
    teacher_batch_size: int = 1024
    seed: int = 0
    progress: bool = True
    device: Optional[torch.device] = None
    dtype: torch.dtype = torch.float32

    @property
    def compares_bodies(self) -> bool:
        """Whether held-out fits choose the body or the training length."""
        return self.hidden_candidates is not None or len(self.training_lengths) > 1


def _hidden(hidden: Any) -> tuple[Optional[tuple[int, ...]], Optional[tuple[tuple[int, ...], ...]]]:
    """``(widths, None)`` for one body, ``(None, candidates)`` for ``"auto"`` or a list of width tuples."""
    if isinstance(hidden, str):
        if hidden != "auto":
            raise ValueError(f"hidden must be widths such as (50,), a list of candidates, or 'auto', got {hidden!r}")
        return None, tuple(tuple(c) for c in BODY_FAMILY)
    if isinstance(hidden, (bytes, bool, np.bool_)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of widths such as (50,), a list of candidates, or 'auto', got {hidden!r}")
    if len(hidden) and all(isinstance(h, Sequence) and not isinstance(h, str) for h in hidden):
        return None, tuple(check_widths(h, "hidden") for h in hidden)
    return check_widths(hidden, "hidden"), None


def _body(o: dict) -> None:
    if o["body"] is not None and not isinstance(o["body"], nn.Module):
        raise TypeError(f"body must be None (the default MLP body) or a torch.nn.Module, got {o['body']!r}")
    o["body_features"] = check_int(o["body_features"], "body_features", 1, allow_none=True)
    if o["body_features"] is not None and o["body"] is None:
        raise ValueError("body_features is the output width of a custom body: pass body= with it, or drop body_features=")
    if o["body"] is not None and o["body_features"] is None:
        raise ValueError("body_features: give the output width of the custom body, e.g. body_features=64")


def _schedule(o: dict) -> None:
    o["num_iterations"] = check_int(o["num_iterations"], "num_iterations", 0)
    o["num_m_steps"] = check_int(o["num_m_steps"], "num_m_steps", 1, allow_none=True)
    o["batch_size"] = check_int(o["batch_size"], "batch_size", 1)
    o["lr"] = check_real(o["lr"], "lr", 0, fix="Adam's step size, e.g. lr=1e-2")
    o["lr_decay"] = check_real(o["lr_decay"], "lr_decay", 0, 1, fix="e.g. lr_decay=0.1")
    o["warmup"] = check_real(o["warmup"], "warmup", 0, 1, low_open=False, fix="a fraction of the EM iterations, e.g. warmup=0.1")
    o["estep"] = check_choice(o["estep"], "estep", ("exact", "minibatch"))
    o["init"] = check_choice(o["init"], "init", ("mmd", "random"))
    o["mmd_steps"] = check_int(o["mmd_steps"], "mmd_steps", 0)
    o["mmd_penalty"] = check_real(o["mmd_penalty"], "mmd_penalty", 0, fix="e.g. mmd_penalty=1.0")


def _choices(o: dict) -> None:
    """The body candidates and training lengths, and the combinations a custom body cannot take."""
    o["hidden"], o["hidden_candidates"] = _hidden(o["hidden_given"])
    o["training_lengths"] = tuple(check_training_length(o["training_length_given"], TRAINING_FAMILY))
    o["loading_hidden"] = check_loading_hidden(o["loading_hidden"], o["body"] is not None)
    if o["hidden_candidates"] is None and len(o["training_lengths"]) > 1 and o["body"] is not None:
        raise ValueError("training_length='auto' compares held-out fits of the default MLP body; pass a fraction with body=")
    if o["hidden_candidates"] is not None and o["body"] is not None:
        raise ValueError("hidden: choosing among bodies works for the default MLP body; pass one hidden= with body=, or drop body=")


#: The options :func:`check_options` takes: ``distill``'s own (but the data), then the ablation switches.
ARGUMENTS = ("num_factors", "task", "covariance", "centered_loadings", "center_logits", "include_nugget",
             "noise_given_factors", "hidden", "loading_hidden", "body", "body_features", "activation", "num_iterations",
             "num_m_steps", "batch_size", "lr", "lr_decay", "warmup", "mmd_steps", "training_length",
             "validation_fraction", "design", "distance_feature", "teacher_batch_size", "seed", "progress", "device",
             "dtype")
ABLATION_SWITCHES = ("mmd_penalty", "init", "estep")


def check_options(**kwargs: Any) -> DistillOptions:
    """Every option of :func:`~pyro_dlf.distill` that needs no data (:data:`ARGUMENTS`), each checked once with its
    name; the ablation switches (:data:`ABLATION_SWITCHES`) may be given too. Other names raise :class:`TypeError`."""
    unknown = sorted(set(kwargs) - set(ARGUMENTS) - set(ABLATION_SWITCHES))
    if unknown:
        raise TypeError(f"distill() got an unexpected keyword argument {unknown[0]!r}")
    o = {"hidden_given": kwargs.pop("hidden", (50,)), "training_length_given": kwargs.pop("training_length", 1.0), **kwargs}
    o = {name: o.get(name, field.default) for name, field in DistillOptions.__dataclass_fields__.items()}
    o["design"] = check_design_option(o["design"], DESIGNS)
    o["distance_feature"] = check_flag_or_auto(o["distance_feature"], "distance_feature")
    if o["distance_feature"] is True and o["body"] is not None:
        raise ValueError("distance_feature=True measures distances between (m, d) rows: drop it with a custom body")
    o["num_factors"] = check_num_factors_option(o["num_factors"])
    o["task"] = check_choice(o["task"], "task", ("regression", "classification"), allow_none=True)
    o["covariance"] = check_choice(o["covariance"], "covariance", ("separable", "full"), allow_none=True)
    o["centered_loadings"] = check_flag(o["centered_loadings"], "centered_loadings", allow_none=True)
    o["validation_fraction"] = check_real(o["validation_fraction"], "validation_fraction", 0, 1, high_open=True,
                                          fix="e.g. validation_fraction=0.2")
    _body(o)
    o["activation"] = check_choice(o["activation"], "activation", tuple(ACTIVATIONS))
    _schedule(o)
    o["center_logits"] = check_flag(o["center_logits"], "center_logits")
    o["include_nugget"] = check_flag(o["include_nugget"], "include_nugget")
    o["noise_given_factors"] = check_flag_or_auto(o["noise_given_factors"], "noise_given_factors")
    o["teacher_batch_size"] = check_int(o["teacher_batch_size"], "teacher_batch_size", 1, fix="e.g. teacher_batch_size=1024")
    o["seed"] = check_int(o["seed"], "seed", 0, maximum=MAX_SEED)
    o["progress"] = check_flag(o["progress"], "progress")
    o["device"] = check_device(o["device"])
    o["dtype"] = check_float_dtype(o["dtype"])
    _choices(o)
    return DistillOptions(**o)
