r"""Exact (generalized) EM for the deep latent factor model, shaped like :class:`pyro.infer.SVI`."""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.nn import pyro_method
from torch import Tensor

from pyro_dlf._validation import (check_batch_size, check_design_points, check_dtype, check_flag, check_generator, check_int, check_num_factors, check_real,
                                  check_teacher_values)
from pyro_dlf.guides.exact_factor_posterior import ExactFactorPosterior
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.sufficient_statistics import (
    FactorStatistics,
    batch_statistics,
    expected_squared_error,
    expected_squared_error_from_statistics,
    log_marginal_likelihood,
    log_weight_sum,
    observed_count,
)

__all__ = ["CHUNK_VALUES", "EM", "expected_complete_nll"]

#: Teacher values per chunk of a pass over all design points when no ``batch_size`` bounds it
#: (``2¹⁸``: its float64 temporaries stay within a CPU's cache-sized working set).
CHUNK_VALUES = 1 << 18


def expected_complete_nll(model: DeepLatentFactor, guide: ExactFactorPosterior, x: Tensor, f: Tensor,
                          observed: Optional[Tensor] = None) -> Tensor:
    r"""The M-step objective: ``−Q(θ, σ_f^2)`` per observed scalar on a batch (mathematics §4).

    .. math::

        -\frac{Q}{nbc} = \tfrac12 \log(2π σ_f^2) + \frac{\sum_i E\|f_i − μ − Φ z_i\|^2}{2 σ_f^2\, n b c}

    with the expectation under the guide's (fixed) posterior. With a nugget
    ``σ_f^2 w_j`` that grows with the distance from the data (mathematics §9.4)
    each squared residual is divided by ``w_j`` and ``\tfrac12 \log w_j`` is added
    per scalar, so ``Q`` also fits the growth ``β``. It is a sum over
    design points, so minibatch gradients are unbiased given the posterior.
    Normalizing per scalar keeps the scale (and Adam's step sizes) independent
    of the number of teachers and design points. With an ``observed`` mask the
    sums and the count run over the observed entries only.
    """
    mean, loading, weight = model.mean_loading_and_weight(x)
    L = model.separable_class_factor
    noise = model.noise_variance.detach()
    sq = expected_squared_error(mean, loading, f, guide.posterior, L, observed=observed, weight=weight)
    count = max(observed_count(f, observed), 1)  # a minibatch may hold no observed value
    log_weight = 0.0
    if weight is not None:  # Σ log w_j over every observed scalar of the batch
        log_weight = log_weight_sum(weight, f, observed)
        log_weight = log_weight * f.shape[0] if observed is None else log_weight.sum()
    return 0.5 * torch.log(2 * math.pi * noise) + (log_weight + sq / noise) / (2 * count)


class EM:
    r"""Exact EM for :class:`~pyro_dlf.models.DeepLatentFactor`, a drop-in beside :class:`pyro.infer.SVI`.

    One call of :meth:`step` is one generalized-EM iteration (mathematics §4):

    1. **E-step** (closed form): the guide's posterior ``q(z_i) = p(z_i | f_i)``
       from all design points (``estep="exact"``, streamed in batches), or from
       each minibatch's teacher values alone (``estep="minibatch"``: the paper's
       Algorithm 1, a cheaper stochastic approximation); then, with
       ``expand=True``, the parameter-expansion step that moves the teachers'
       shared posterior offset into ``μ``;
    2. **M-step for θ**: ``num_m_steps`` minibatch gradient steps of ``optim``
       on the expected complete-data negative log-likelihood ``loss`` (default
       :func:`expected_complete_nll`), or, with ``mstep="linear_heads"``, the
       exact maximizer over the linear heads with the body frozen (univariate
       model; classical factor-analysis regression, a least-squares solve);
    3. **M-step for σ_f²** (closed form): the mean of
       ``E(f_ij − μ(x_j) − Φ(x_j)^T z_i)^2 / w_j`` over teachers, points (and
       classes) at the new θ, floored at ``noise_floor`` (``w_j = 1`` unless the
       nugget grows with the distance from the data, mathematics §9.4).

    With an exact M-step each iteration cannot decrease the marginal likelihood.
    The statistics pass of step 3 is reused by the next E-step when θ has not
    changed in between, so an exact iteration costs ``num_m_steps`` gradient
    steps plus one forward pass over the design points.

    :param model: a :class:`~pyro_dlf.models.DeepLatentFactor`.
    :param guide: its :class:`~pyro_dlf.guides.ExactFactorPosterior`.
    :param optim: a :class:`pyro.optim.PyroOptim` (e.g. ``pyro.optim.Adam({"lr": 1e-2})``),
        as for SVI; it updates every network parameter and ``L`` (not ``σ_f^2``).
    :param loss: ``loss(model, guide, x_batch, f_batch) -> Tensor``, the M-step
        objective; default :func:`expected_complete_nll`.
    :param num_m_steps: gradient steps per iteration.
    :param batch_size: design points per minibatch, and per chunk of the statistics pass (default: all
        of them per step, each step's gradient and each pass computed in chunks of about
        :data:`CHUNK_VALUES` teacher values; mathematics §4.6).
    :param estep: ``"exact"`` (default) or ``"minibatch"``.
    :param mstep: ``"gradient"`` (default) or ``"linear_heads"``.
    :param noise_floor: lower bound of ``σ_f^2`` relative to ``model.output_scale ** 2``
        (so fits are equivariant to the teachers' units).
    :param expand: after each E-step, move the teachers' shared posterior
        offset into the mean function (parameter-expanded EM, see :meth:`_expand`).
    :param generator: a :class:`torch.Generator` for the minibatch order.
    """

    def __init__(
        self,
        model: DeepLatentFactor,
        guide: ExactFactorPosterior,
        optim: Optional[pyro.optim.PyroOptim],
        loss: Optional[Callable[..., Tensor]] = None,
        *,
        num_m_steps: int = 10,
        batch_size: Optional[int] = None,
        estep: str = "exact",
        mstep: str = "gradient",
        noise_floor: float = 1e-6,
        expand: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if not isinstance(model, DeepLatentFactor):
            raise TypeError(f"model must be a pyro_dlf.models.DeepLatentFactor, got {type(model).__name__}")
        if not isinstance(guide, ExactFactorPosterior) or guide.model is not model:
            raise ValueError("guide must be ExactFactorPosterior(model) for this same model")
        if estep not in ("exact", "minibatch"):
            raise ValueError(f"estep must be 'exact' or 'minibatch', got {estep!r}")
        if mstep not in ("gradient", "linear_heads"):
            raise ValueError(f"mstep must be 'gradient' or 'linear_heads', got {mstep!r}")
        if mstep == "gradient" and not isinstance(optim, pyro.optim.PyroOptim):
            raise ValueError("optim should be an instance of pyro.optim.PyroOptim, e.g. pyro.optim.Adam({'lr': 1e-2})")
        if mstep == "linear_heads":
            if model.multivariate:
                raise NotImplementedError("mstep='linear_heads' is implemented for the univariate model only; use mstep='gradient'")
            if estep != "exact":
                raise ValueError("mstep='linear_heads' needs estep='exact'")
            if model.loading_hidden is not None:
                raise NotImplementedError("mstep='linear_heads' solves heads that read the same features; with a separate loading body "
                                          "(loading_hidden) use mstep='gradient'")
            if model.distance_anchors is not None:
                raise NotImplementedError("mstep='linear_heads' assumes a constant nugget; with the distance feature (distance_anchors) "
                                          "use mstep='gradient'")
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be None (the expected complete negative log-likelihood) or a callable, got {type(loss).__name__}")
        check_generator(generator)
        num_m_steps = check_int(num_m_steps, "num_m_steps", 0)
        check_batch_size(batch_size)
        check_real(noise_floor, "noise_floor", 0)
        check_flag(expand, "expand")
        if mstep == "gradient" and num_m_steps > 0 and not any(p.requires_grad for p in model.parameters()):
            raise ValueError("model: every parameter is frozen (requires_grad=False), as a distilled student's are; "
                             "call student.unfreeze() to fine-tune it")
        if estep == "minibatch" and num_m_steps < 1:
            raise ValueError("num_m_steps must be at least 1 with estep='minibatch': its E-steps happen per minibatch")
        self.model = model
        self.guide = guide
        self.optim = optim
        self.loss = expected_complete_nll if loss is None else loss
        self.num_m_steps = num_m_steps
        self.batch_size = batch_size
        self.estep = estep
        self.mstep = mstep
        self.noise_floor = noise_floor
        self.expand = expand
        self.generator = generator
        self._order: Optional[Tensor] = None
        self._cursor = 0
        self._cache: Optional[tuple[tuple, FactorStatistics]] = None
        self._weights: dict = {}
        self._checked: Optional[tuple[int, ...]] = None
        self._observed: Optional[Tensor] = None

    # --------------------------------------------------------------- helpers
    def _params(self) -> list[Tensor]:
        noise = self.model.noise_variance_unconstrained
        return [p for p in self.model.parameters() if p.requires_grad and p is not noise]

    def _chunk(self, f: Tensor) -> int:
        """Design points per chunk of a pass over all of them: ``batch_size`` when given (the user's memory
        bound, e.g. for an image body), else about :data:`CHUNK_VALUES` teacher values, so that a pass
        works in cache-sized pieces instead of on ``(n, m)`` temporaries."""
        if self.batch_size is not None:
            return self.batch_size
        per_point = f[:, :1].numel()  # teachers × outputs at one point
        return max(1, CHUNK_VALUES // max(per_point, 1))

    def _checksums(self, x: Tensor, f: Tensor) -> list[float]:
        """A checksum of each data tensor: ``Σ_j w_j Σ_k t_{jk} u_k`` with fixed random weights.

        Any change of values or order moves it (with probability one). It is
        accumulated in float64 over blocks of at most 2¹⁸ entries, so it costs
        one read of the data and no float64 copy of it.
        """
        def checksum(t: Tensor) -> Tensor:
            flat = t.detach().reshape(t.shape[0], -1)
            if flat.shape not in self._weights:
                g = torch.Generator().manual_seed(1234)
                self._weights[flat.shape] = tuple(torch.rand(k, generator=g, dtype=torch.float64) + 0.5 for k in flat.shape)
            w, u = (v.to(flat.device) for v in self._weights[flat.shape])
            rows, cols = flat.shape
            step_c = min(cols, 1 << 18) or 1
            step_r = max(1, (1 << 18) // step_c)
            total = torch.zeros((), dtype=torch.float64, device=flat.device)
            for r in range(0, rows, step_r):
                for c in range(0, cols, step_c):
                    block = flat[r:r + step_r, c:c + step_c].double()
                    total = total + w[r:r + step_r] @ (block @ u[c:c + step_c])
            return total

        data = [x, f] + ([] if self._observed is None else [self._observed])
        return torch.stack([checksum(t) for t in data]).tolist()

    def _fingerprint(self, x: Tensor, f: Tensor, sums: Optional[list[float]] = None) -> tuple:
        """What the cached statistics depend on, checked by value so that no edit escapes.

        Version counters miss edits made through ``.data`` or a NumPy view, so
        θ (small) is compared entry by entry against a copy, and the data by
        :meth:`_checksums` (``sums``, when the caller has them for the same data).
        """
        shapes = tuple(tuple(t.shape) for t in [x, f] + ([] if self._observed is None else [self._observed]))
        sums = self._checksums(x, f) if sums is None else sums
        state = [t.detach().clone() for t in (*self.model.parameters(), *self.model.buffers())]
        return shapes, sums, state

    @staticmethod
    def _same(a: tuple, b: tuple) -> bool:
        return (a[0] == b[0] and a[1] == b[1] and len(a[2]) == len(b[2])
                and all(s.shape == t.shape and torch.equal(s, t) for s, t in zip(a[2], b[2])))

    def _check(self, x: Tensor, f: Tensor, observed: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        data = (x, f) if observed is None else (x, f, observed)
        # Anything but tensors (None, arrays, lists) is checked, and named, every time.
        key = tuple((id(t), t.data_ptr(), t._version, tuple(t.shape)) for t in data) if all(
            isinstance(t, Tensor) for t in data) else None
        if key is None or self._checked != key:
            x = check_design_points(x, "x", integer_ok=self.model.custom_body)
            self.model.check_inputs(x, "x")
            f = check_teacher_values(f, x, self.model.num_outputs, "f", observed=observed)
            check_dtype(f, self.model, "f")
            check_num_factors(self.model.num_factors, f.shape[0], self.model.num_outputs, self.model.covariance_type)
            if observed is not None and self.mstep == "linear_heads":
                raise NotImplementedError("observed: mstep='linear_heads' needs every teacher at every point; use mstep='gradient'")
            self._checked = key
            self._observed = observed
            self._order = None
            self._cache = None
        return x, f

    def _mask(self, idx=None) -> Optional[Tensor]:
        """The observation mask of the checked data (columns ``idx``: a slice or index tensor), or ``None``."""
        if self._observed is None:
            return None
        return self._observed if idx is None else self._observed[:, idx]

    def _count(self, f: Tensor) -> int:
        """Observed scalars: every entry of ``f``, or the masked ones (times the outputs per point)."""
        return observed_count(f, self._observed)

    def _batches(self, m: int, count: int):
        """``count`` minibatch index sets, walking shuffled epochs across calls."""
        size = m if self.batch_size is None else min(self.batch_size, m)
        for _ in range(count):
            if self._order is None or self._cursor + size > m:
                device = None if self.generator is None else self.generator.device
                self._order = torch.randperm(m, generator=self.generator, device=device)
                self._cursor = 0
            yield self._order[self._cursor:self._cursor + size]
            self._cursor += size

    def _statistics(self, x: Tensor, f: Tensor, sums: Optional[list[float]] = None) -> FactorStatistics:
        key = self._fingerprint(x, f, sums)
        if self._cache is not None and self._same(self._cache[0], key):
            return self._cache[1]
        stats = self.model.statistics(x, f, self._chunk(f), self._mask())
        self._cache = (key, stats)
        return stats

    def _log_likelihood(self, stats: FactorStatistics) -> Tensor:
        L = self.model.class_factor.detach() if self.model.separable else None
        return log_marginal_likelihood(stats, self.guide.posterior, self.model.noise_variance.detach(), L)

    def _set_noise(self, value: float) -> None:
        self.model.set_noise_variance(value, self.noise_floor)

    def _noise_update(self, x: Tensor, f: Tensor, sums: Optional[list[float]] = None) -> None:
        """Closed-form ``σ_f^2``: mean expected squared residual at the new θ (``sums``: the
        data's checksums, when the caller has them)."""
        model, size = self.model, self._chunk(f)
        total = 0.0
        with torch.no_grad():
            L = model.separable_class_factor
            if self.estep == "exact":
                # One pass gives the next E-step's statistics (they do not depend on σ_f^2), and with the
                # posterior held fixed they determine the expected squared residual at the new θ.
                stats = None
                for start in range(0, x.shape[0], size):
                    mean, loading, weight = model.mean_loading_and_weight(x[start:start + size])
                    fb, ob = f[:, start:start + size], self._mask(slice(start, start + size))
                    part = batch_statistics(mean, loading, fb, observed=ob, weight=weight)
                    stats = part if stats is None else stats + part
                total = float(expected_squared_error_from_statistics(stats, self.guide.posterior, L))
                self._set_noise(total / self._count(f))
                self._cache = (self._fingerprint(x, f, sums), stats)
            else:
                for start in range(0, x.shape[0], size):
                    xb, fb, ob = x[start:start + size], f[:, start:start + size], self._mask(slice(start, start + size))
                    self.guide.set_statistics(model.statistics(xb, fb, observed=ob))
                    mean, loading, weight = model.mean_loading_and_weight(xb)
                    total += float(expected_squared_error(mean, loading, fb, self.guide.posterior, L, observed=ob, weight=weight))
                self._set_noise(total / self._count(f))

    def _expand(self) -> None:
        r"""Parameter-expanded EM (Liu, Rubin & Wu, 1998).

        Expand the prior to ``z ~ N(η, Σ)``. Its M-step gives
        ``η̂ = (1/n) Σ_i E[z_i]`` and ``Σ̂ = (1/n) Σ_i E[(z_i − η̂)(z_i − η̂)^T]``;
        reducing back to ``N(0, I)`` with ``z = η̂ + C z'``, ``C = chol(Σ̂)``, gives

        * ``μ ← μ + Φ η̂`` (separable ``μ + L η̂ Φ``): a mean misfit shared by
          all teachers moves into the mean instead of hiding in the loadings;
        * ``Φ ← C^T Φ`` (univariate and full models; full: ``Φ(x) ← Φ(x) C``,
          the same map on each class's loading row): each factor is rescaled to the
          spread the teachers actually show along it. Plain EM shrinks an
          over-stated factor only very slowly -- its posterior variance falls
          as its loading grows, so ``Q`` is nearly flat in the factor's scale --
          and the predictive then over-states the epistemic variance;
        * the posterior moments are mapped to ``z'`` (``E z' = C^{-1}(E z − η̂)``,
          ``Cov z' = C^{-1} S C^{-T}``).

        Both maps are exact because the heads are linear in the body features
        (with a separate loading body the mean head reads its features too, so
        ``Φ η`` is a change of the mean head's weights on them),
        every teacher's complete-data fit ``μ + Φ^T E[z_i]`` is unchanged, and
        the iteration stays monotone (the full model's loading projection acts
        on the class index, so it commutes with both maps). The separable model
        takes the mean step only.
        """
        model, post = self.model, self.guide.posterior
        eta = post.mean.mean(0)
        full = model.covariance_type == "full"
        with torch.no_grad():
            W, b = model.loading_head.weight, model.loading_head.bias
            if full:
                # Rows of the loading head are (class, factor) pairs: fold η over the factors.
                c, q = model.num_outputs, model.num_factors
                Wc, bc = W.unflatten(0, (c, q)), b.unflatten(0, (c, q))
                shift_w, shift_b = torch.einsum("cqd,q->cd", Wc, eta.to(W.dtype)), bc @ eta.to(W.dtype)
                if model.centered_loadings:
                    shift_w, shift_b = shift_w - shift_w.mean(0), shift_b - shift_b.mean()
                model.mean_head.weight[:, model.loading_features].add_(shift_w)
                model.mean_head.bias.add_(shift_b)
            else:
                shift = eta.to(W.dtype) if not model.multivariate else model.class_factor @ eta.to(W.dtype)
                if not model.multivariate:
                    shift = shift.unsqueeze(0)
                # The mean head reads the loading features too (all of them without a loading body).
                model.mean_head.weight[:, model.loading_features].add_(shift @ W)
                model.mean_head.bias.add_(shift @ b)
        centred = post.mean - eta
        if model.separable:
            post.mean = centred
            return
        n = centred.shape[0]
        # Teachers observed on different points have their own posterior covariances: average them.
        shared = post.covariance if post.covariance.dim() == 2 else post.covariance.mean(0)
        spread = centred.T @ centred / n + shared
        chol = torch.linalg.cholesky(spread)
        with torch.no_grad():
            factor = chol.T.to(W.dtype)
            if full:
                model.loading_head.weight.copy_(torch.einsum("ab,cbd->cad", factor, Wc).flatten(0, 1))
                model.loading_head.bias.copy_((bc @ factor.T).flatten())
            else:
                model.loading_head.weight.copy_(factor @ W)
                model.loading_head.bias.copy_(factor @ b)
        post.mean = torch.linalg.solve_triangular(chol, centred.T, upper=False).T
        inv = torch.linalg.solve_triangular(chol, torch.eye(len(chol), dtype=chol.dtype, device=chol.device), upper=False)
        post.covariance = inv @ post.covariance @ inv.T

    def _gradient_step(self, xb: Tensor, fb: Tensor, ob: Optional[Tensor] = None) -> None:
        """One optimizer step on the objective of one minibatch."""
        self._apply_gradients(self._backward(xb, fb, ob))

    def _full_step(self, x: Tensor, f: Tensor) -> None:
        """One optimizer step on all design points. The default objective is a mean over observed values,
        so its gradient is the count-weighted sum of its chunks' gradients: it is accumulated chunk by
        chunk (the same step, in cache-sized pieces). A user's ``loss`` is called once on all points."""
        if self.loss is not expected_complete_nll:
            self._gradient_step(x, f, self._mask())
            return
        size = self._chunk(f)
        chunks = ((x[s:s + size], f[:, s:s + size], self._mask(slice(s, s + size))) for s in range(0, x.shape[0], size))
        self._apply_gradients(self._accumulate(chunks, max(self._count(f), 1)))

    def _accumulate(self, batches, total: int) -> list[Tensor]:
        """The gradient of a mean over ``total`` observed values, from ``(x_b, f_b, observed_b)`` batches whose
        objectives are means over their own values: each batch's gradient weighted by its share."""
        params: list[Tensor] = []
        for xb, fb, ob in batches:
            params = self._backward(xb, fb, ob, scale=observed_count(fb, ob) / total)
        return params

    def _backward(self, xb: Tensor, fb: Tensor, ob: Optional[Tensor] = None, scale: float = 1.0) -> list[Tensor]:
        """Add ``scale`` times the gradient of the minibatch objective to the parameters' ``.grad``;
        returns the parameters it reaches."""
        # As SVI does: trace the loss for its param sites, so every parameter is registered in
        # Pyro's param store under its name and the PyroOptim keeps one state per named parameter
        # (optim.get_state() / save() / load() then work); σ_f² has its own closed-form update.
        # The loss runs inside the model's Pyro context (pyro_method), where its layers and L
        # become named param sites.
        def objective(model):
            # A user loss keeps SVI's four arguments unless the teachers are masked.
            return self.loss(model, self.guide, xb, fb) if ob is None else self.loss(model, self.guide, xb, fb, observed=ob)

        with poutine.trace(param_only=True) as tape, warnings.catch_warnings():
            # A body with frozen weights (e.g. a LoRA-adapted encoder) is intended: its frozen
            # parameters are simply not Pyro params, which Pyro warns about once per tensor and step.
            warnings.filterwarnings("ignore", message=r".*not registered in the param store because requires_grad=False")
            loss = pyro_method(objective)(self.model)
        noise = self.model.noise_variance_unconstrained
        params = [site["value"].unconstrained() for site in tape.trace.nodes.values()]
        params = [p for p in params if p is not noise and p.requires_grad] or self._params()
        (loss if scale == 1.0 else loss * scale).backward()
        return params

    def _apply_gradients(self, params: list[Tensor], average: bool = True) -> None:
        """The optimizer step on the gradients in ``.grad`` (reduced over processes first: averaged, or summed
        when each process has already weighted its share); clears them."""
        self._reduce_gradients(params, average)
        self._check_gradients(params)
        self.optim(params)
        for p in params:
            p.grad = None

    def _reduce_gradients(self, params: list[Tensor], average: bool = True) -> None:
        """Hook between the backward pass and the optimizer step (data-parallel subclasses average here)."""

    def _check_gradients(self, params: list[Tensor]) -> None:
        """Hook before the optimizer step, after the reduction (a stream whose values are not scanned
        batch by batch checks the gradient here)."""

    def _linear_heads(self, x: Tensor, f: Tensor) -> None:
        r"""Exact M-step over the linear heads with the body frozen.

        In head units ``\tilde f_{ij} = (f_{ij} − loc)/scale = \tilde h_j^T Θ \tilde z_i + noise``
        with ``\tilde h = [h; 1]`` and ``\tilde z = [1; z]``, the expected
        complete-data log-likelihood is quadratic in ``Θ`` with gradient
        ``G = \tilde H^T \tilde F^T E[\tilde Z] − \tilde H^T \tilde H Θ M``,
        ``M = Σ_i E[\tilde z_i \tilde z_i^T]``. The step
        ``Θ ← Θ + (\tilde H^T \tilde H)^+ G M^{-1}`` is its exact maximizer on
        the eigenspaces of ``\tilde H^T \tilde H`` above a relative ``1e-12``
        and leaves the numerically null directions unchanged: body features
        are often nearly collinear, and solving the normal equations outright
        would amplify round-off there and break the monotonicity of EM.
        """
        model, post = self.model, self.guide.posterior
        size = self.batch_size or x.shape[0]
        with torch.no_grad():
            hh, hf = 0.0, 0.0
            for start in range(0, x.shape[0], size):
                h = model.features(x[start:start + size]).double()
                h = torch.cat([h, torch.ones_like(h[:, :1])], 1)
                ft = (f[:, start:start + size].double() - model.output_loc.double()) / model.output_scale.double()
                hh = hh + h.T @ h
                hf = hf + h.T @ ft.T  # (d+1, n)
            ez = post.mean.double()
            ez1 = torch.cat([torch.ones_like(ez[:, :1]), ez], 1)  # (n, 1+q)
            second = ez1.T @ ez1
            second[1:, 1:] += ez.shape[0] * post.covariance.double()
            weight = torch.cat([model.mean_head.weight, model.loading_head.weight]).double()  # (1+q, d)
            bias = torch.cat([model.mean_head.bias, model.loading_head.bias]).double()
            theta = torch.cat([weight.T, bias.unsqueeze(0)])  # (d+1, 1+q)
            grad = hf @ ez1 - hh @ theta @ second
            theta = theta + torch.linalg.pinv(hh, hermitian=True, rtol=1e-12) @ grad @ torch.linalg.inv(second)
            dtype = model.mean_head.weight.dtype
            model.mean_head.weight.copy_(theta[:-1, :1].T.to(dtype))
            model.mean_head.bias.copy_(theta[-1, :1].to(dtype))
            model.loading_head.weight.copy_(theta[:-1, 1:].T.to(dtype))
            model.loading_head.bias.copy_(theta[-1, 1:].to(dtype))

    # -------------------------------------------------------- SVI-like API
    def step(self, x: Tensor, f: Tensor, observed: Optional[Tensor] = None) -> float:
        """One EM iteration.

        :param x: design points ``(m, ...)``.
        :param f: teacher values ``(n, m)`` or ``(n, m, c)``.
        :param observed: optional ``(n, m)`` booleans: teacher ``i`` is observed
            at point ``j`` (e.g. out-of-fold values; mathematics §4). Every E-step
            quantity, ``Q`` and the ``σ_f^2`` update then run over each
            teacher's observed points only (univariate and full models).
        :returns: the negative log marginal likelihood (summed over teachers)
            at the parameters before the update (``estep="exact"``); for
            ``estep="minibatch"``, the sum over this iteration's minibatches of
            their own negative log marginal likelihoods (each minibatch treated
            as a separate data set), an estimate that needs no extra pass.
            After a minibatch step the guide holds the last minibatch's
            posterior; call ``guide.update(x, f)`` for the exact one.
        """
        x, f = self._check(x, f, observed)
        # One read of the data for the cache's checksums per iteration: x and f do not change within it.
        sums = self._checksums(x, f) if self.estep == "exact" else None
        if self.estep == "exact":
            stats = self._statistics(x, f, sums)
            self.guide.set_statistics(stats)
            loss = -float(self._log_likelihood(stats).sum())
            if self.expand:
                self._expand()
            if self.mstep == "linear_heads":
                self._linear_heads(x, f)
            elif self.batch_size is None:
                for _ in range(self.num_m_steps):
                    self._full_step(x, f)
            else:
                for idx in self._batches(x.shape[0], self.num_m_steps):
                    self._gradient_step(x[idx], f[:, idx], self._mask(idx))
        else:
            loss = 0.0
            for idx in self._batches(x.shape[0], self.num_m_steps):
                xb, fb, ob = x[idx], f[:, idx], self._mask(idx)
                stats = self.model.statistics(xb, fb, observed=ob)
                self.guide.set_statistics(stats)
                loss -= float(self._log_likelihood(stats).sum())
                if self.expand:
                    self._expand()
                self._gradient_step(xb, fb, ob)
        self._noise_update(x, f, sums)
        return loss

    def evaluate_loss(self, x: Tensor, f: Tensor, observed: Optional[Tensor] = None) -> float:
        """The exact negative log marginal likelihood (summed over teachers), no update."""
        x, f = self._check(x, f, observed)
        return -float(self.model.log_marginal_likelihood(x, f, self.batch_size, observed).sum())
