"""The teacher deep ensemble for regression, and the shared squared-error training loop.

The teachers distilled by this library follow the deep-ensemble recipe:
:math:`M` multilayer perceptrons :math:`f_1, \\dots, f_M` with identical
architecture are trained on squared error from different random
initialisations (and different minibatch orders), and each gets its own
homoscedastic noise variance :math:`\\sigma^2_{\\varepsilon,i}`. The ensemble
predictive is the equal-weight Gaussian mixture

.. math::

    p(y \\mid x) = \\frac1M \\sum_{i=1}^M
        \\mathcal N\\bigl(y;\\, f_i(x),\\, \\sigma^2_{\\varepsilon,i}\\bigr),

with mean :math:`\\bar f(x) = \\frac1M \\sum_i f_i(x)` and variance
:math:`\\frac1M \\sum_i \\bigl(\\sigma^2_{\\varepsilon,i} + f_i(x)^2\\bigr) - \\bar f(x)^2`
(aleatoric plus between-member, "epistemic", spread).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from numbers import Integral, Real

import torch
from torch import Tensor, nn

from pyro_dlf._validation import check_flag, check_int
from pyro_dlf.training import fit_networks
from pyro_dlf_bench.datasets.splits import Standardizer
from pyro_dlf.nn import MLP

__all__ = ["MixtureRegressor", "DeepEnsembleRegressor", "fit_regressor", "fit_regressors"]


# --------------------------------------------------------------------------- validation


def _check_data_tensor(t: object, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; wrap it with torch.as_tensor")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}; convert it with {name}.float()")
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values; clean or impute them first")
    return t


# --------------------------------------------------------------------------- training loop


def fit_regressor(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 200,
    batch_size: int | None = None,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> float:
    """Train ``net`` in place by minimising the mean squared error with Adam.

    The one-network case of :func:`fit_regressors`, the library's single
    squared-error regression loop (teachers, baselines). Each epoch visits the
    ``n`` rows once, in minibatches of ``batch_size`` taken from a fresh random
    permutation drawn from ``generator``, and takes one Adam step per minibatch on

    .. math::

        L(\\theta) = \\frac{1}{|B|} \\sum_{j \\in B} \\lVert f_\\theta(x_j) - y_j \\rVert^2
        \\;(+\\ \\text{Adam's L2 term } \\tfrac{\\lambda}{2}\\lVert\\theta\\rVert^2
        \\text{ via ``weight_decay``}),

    the squared norm averaged over the entries of ``y_j``. With
    ``batch_size=None`` (or ``>= n``) every step is a full-batch step and no
    permutation is drawn, so the result does not depend on ``generator`` at all.
    Inputs are assumed to be standardised already (see
    :class:`~pyro_dlf.data.Standardizer`); the default ``lr`` is tuned for that.

    :param net: module mapping ``x`` to predictions shaped like ``y`` (a trailing
        output dimension of size 1 is squeezed, so ``MLP(d, h, 1)`` fits ``y`` of
        shape ``(n,)``).
    :param x: inputs with ``n`` rows, same dtype and device as ``net``.
    :param y: targets with ``n`` rows.
    :param epochs: number of passes over the data.
    :param batch_size: minibatch size, or ``None`` for full-batch training.
    :param lr: Adam learning rate.
    :param weight_decay: Adam's (coupled) L2 penalty coefficient :math:`\\lambda`.
    :param generator: source of the minibatch permutations; pass a seeded
        :class:`torch.Generator` for reproducibility (``None`` uses the global RNG).
    :param progress: show a tqdm bar over epochs.
    :returns: the final training MSE, :math:`\\frac1n \\sum_j \\lVert f_\\theta(x_j) - y_j\\rVert^2`
        averaged over all entries of ``y`` (no gradients), in the units of ``y``.
    :raises TypeError: on arguments of the wrong type or dtype.
    :raises ValueError: on invalid values or mismatched shapes / devices.
    :raises RuntimeError: if the loss diverges to NaN/inf.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    x = _check_data_tensor(x, "x")
    y = _check_data_tensor(y, "y")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return fit_regressors(
        [net], x, y.unsqueeze(0), epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, generators=[generator], progress=progress,
    )[0]


def fit_regressors(
    nets: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    rows: Tensor | None = None,
    epochs: int = 200,
    batch_size: int | None = None,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    generators: Sequence[torch.Generator | None] | None = None,
    progress: bool = False,
) -> list[float]:
    """Train :math:`K` regression networks of one architecture at once, each on its own targets and rows.

    :func:`~pyro_dlf.training.fit_networks` with the squared error:
    network :math:`k` takes one Adam step per minibatch on
    :math:`\\frac{1}{|B_k|}\\sum_{j \\in B_k} \\lVert f_{\\theta_k}(x_j) - y_{kj}\\rVert^2`
    and follows the same trajectory as when trained alone.

    :param nets: :math:`K \\ge 1` modules with identical parameters (updated in place).
    :param x: shared inputs ``(n, ...)``.
    :param y: targets ``(K, n, ...)``.
    :param rows: optional ``(K, r)`` row indices per network.
    :param epochs: passes over each network's rows.
    :param batch_size: minibatch size, ``None`` for full batch.
    :param lr: Adam learning rate.
    :param weight_decay: Adam's coupled L2 coefficient.
    :param generators: ``K`` sources of the minibatch permutations.
    :param progress: show a tqdm bar over epochs.
    :returns: each network's final mean squared error on its own rows.
    """
    y = _check_data_tensor(y, "y")
    return fit_networks(nets, x, y, loss="mse", rows=rows, epochs=epochs, batch_size=batch_size, lr=lr,
                        weight_decay=weight_decay, generators=generators, progress=check_flag(progress, "progress"),
                        desc="fit_regressors")


# --------------------------------------------------------------------------- deep ensemble


class MixtureRegressor(nn.Module):
    """Shared parts of every equal-weight Gaussian-mixture regressor in the zoo.

    A subclass has ``num_members`` members :math:`g_i` and implements
    :meth:`member_predictions` (original units); this base holds the
    standardisation and noise buffers and builds the predictive
    :math:`\\frac1M\\sum_i \\mathcal N(g_i(x), \\sigma^2_{\\varepsilon,i})` from them.

    Buffers (saved in ``state_dict``): ``x_loc``/``x_scale`` ``(1, d)``,
    ``y_loc``/``y_scale`` ``(1,)``, ``noise_variances`` ``(M,)`` in original
    units, and the 0-d boolean ``fitted``.
    """

    x_loc: Tensor
    x_scale: Tensor
    y_loc: Tensor
    y_scale: Tensor
    noise_variances: Tensor
    fitted: Tensor

    def _register_buffers(self, in_features: int, num_members: int) -> None:
        self.register_buffer("x_loc", torch.zeros(1, in_features))
        self.register_buffer("x_scale", torch.ones(1, in_features))
        self.register_buffer("y_loc", torch.zeros(1))
        self.register_buffer("y_scale", torch.ones(1))
        self.register_buffer("noise_variances", torch.full((num_members,), float("nan")))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def x_standardizer(self) -> Standardizer:
        """The input standardisation fitted with the members."""
        return Standardizer(loc=self.x_loc, scale=self.x_scale)

    @property
    def y_standardizer(self) -> Standardizer:
        """The target standardisation fitted with the members."""
        return Standardizer(loc=self.y_loc, scale=self.y_scale)

    def member_predictions(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Member means :math:`g_i(x_j)` in original units, shape ``(M, m)``."""
        raise NotImplementedError

    def predictive(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Components of the equal-weight Gaussian mixture predictive.

        :param x: raw inputs of shape ``(m, in_features)``.
        :returns: ``(means, variances)``, both ``(M, m)`` in original ``y`` units:
            ``means[i, j]`` :math:`= g_i(x_j)` and ``variances[i, j]``
            :math:`= \\sigma^2_{\\varepsilon,i}` (homoscedastic, so constant in
            ``j``). The predictive density is
            :math:`\\frac1M\\sum_i \\mathcal N(y; \\text{means}[i], \\text{variances}[i])`;
            the pair plugs into :func:`pyro_dlf_bench.metrics.mixture_nll` and friends.
        """
        means = self.member_predictions(x)
        variances = self.noise_variances.unsqueeze(-1).expand_as(means).clone()
        return means, variances

    def forward(self, x: Tensor) -> Tensor:
        """Mixture mean :math:`\\frac1M\\sum_i g_i(x)`, shape ``(m,)`` (no grad)."""
        return self.member_predictions(x).mean(dim=0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_members={self.num_members}, hidden={self.hidden}"


class DeepEnsembleRegressor(MixtureRegressor):
    """Deep ensemble of :math:`M` MLP regressors with per-member Gaussian noise.

    Member :math:`i` is ``MLP(in_features, hidden, 1)`` trained by
    :func:`fit_regressor` on standardised data from its own seed; together with
    its noise variance :math:`\\sigma^2_{\\varepsilon,i}` it defines the mixture
    component :math:`\\mathcal N(f_i(x), \\sigma^2_{\\varepsilon,i})` (see the
    module docstring). All public outputs are in the original units of ``x`` and
    ``y``; inputs are cast to the ensemble's dtype and device.

    **Noise variance estimate.** :math:`\\sigma^2_{\\varepsilon,i}` is the
    maximum-likelihood homoscedastic variance of member :math:`i`'s residuals,
    i.e. an MSE, but *which* residuals matters:

    * ``validation_fraction > 0`` (recommended): each member holds out its own
      random ``round(validation_fraction * n)`` rows, trains on the rest, and uses
      the held-out MSE :math:`\\frac{1}{n_\\text{val}}\\sum_{j \\in \\text{val}_i}
      (y_j - f_i(x_j))^2`. It estimates :math:`\\sigma^2 + \\mathbb E[(f - f_i)^2]`,
      the member's actual predictive squared error, so it is unbiased for
      unseen points, with relative standard error :math:`\\approx\\sqrt{2/n_\\text{val}}`
      for Gaussian noise. The random held-out subsets also add data diversity
      between members.
    * ``validation_fraction = 0`` (default, as in the plain deep-ensemble recipe):
      the training MSE. This is biased *low*: already for least squares with
      :math:`p` parameters :math:`\\mathbb E[\\text{RSS}/n] = \\sigma^2 (n-p)/n`, and
      a network's effective degrees of freedom are unknown and can approach
      :math:`n`, so an overfitted member can report almost no noise. No
      correction is attempted; use a held-out fraction or early stopping
      (fewer ``epochs``) / ``weight_decay`` when calibration matters.

    The estimate is floored at machine epsilon (in standardised units) so each
    component stays a proper density.

    :param in_features: input dimension :math:`d`.
    :param num_members: ensemble size :math:`M`.
    :param hidden: hidden-layer widths of every member.
    :param activation: activation class of every member.

    Buffers (saved in ``state_dict``): ``x_loc``/``x_scale`` of shape ``(1, d)``
    and ``y_loc``/``y_scale`` of shape ``(1,)`` (the training standardisation),
    ``noise_variances`` of shape ``(M,)`` in original ``y`` units, and the 0-d
    boolean ``fitted``.
    """

    def __init__(
        self,
        in_features: int,
        num_members: int = 10,
        hidden: Sequence[int] = (50, 50),
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        in_features = check_int(in_features, "in_features")
        num_members = check_int(num_members, "num_members")
        # MLP validates hidden and activation. fit() re-initialises every member
        # from its own seed, so build these under a forked, fixed-seed CPU RNG
        # rather than consuming draws from the caller's global stream.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(0)
            self.members = nn.ModuleList(MLP(in_features, hidden, 1, activation) for _ in range(num_members))
        self.in_features = in_features
        self.num_members = num_members
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self._register_buffers(in_features, num_members)

    # ------------------------------------------------------------------ helpers

    def _check_x(self, x: object) -> Tensor:
        x = _check_data_tensor(x, "x")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            hint = "; add the feature dimension with x.unsqueeze(-1)" if x.dim() == 1 and self.in_features == 1 else ""
            raise ValueError(
                f"x must have shape (n, {self.in_features}), got {tuple(x.shape)}{hint}"
            )
        return x.to(dtype=self.x_loc.dtype, device=self.x_loc.device)

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError("DeepEnsembleRegressor is not fitted yet; call .fit(x, y) first")

    def _reset_member(self, i: int, seed: int) -> None:
        """Re-initialise member ``i`` deterministically from ``seed``.

        A fresh CPU MLP is built under a forked CPU RNG (so the caller's global
        RNG stream is untouched) and its weights copied in, which makes the
        initialisation independent of the ensemble's device and of history.
        """
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            fresh = MLP(self.in_features, self.hidden, 1, self.activation)
        self.members[i].load_state_dict(fresh.state_dict())

    def _member_predict(self, i: int, x: Tensor) -> Tensor:
        """Predictions ``(m,)`` of member ``i`` at raw inputs, in original units."""
        self._check_fitted()
        if isinstance(i, bool) or not isinstance(i, Integral) or not 0 <= i < self.num_members:
            raise ValueError(f"member index must be an int in [0, {self.num_members}), got {i!r}")
        xs = self.x_standardizer.transform(self._check_x(x))
        with torch.no_grad():
            return self.y_standardizer.inverse(self.members[i](xs).squeeze(-1))

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        x: Tensor,
        y: Tensor,
        *,
        epochs: int = 200,
        batch_size: int | None = None,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        seed: int = 0,
        progress: bool = True,
        validation_fraction: float = 0.0,
    ) -> DeepEnsembleRegressor:
        """Standardise the data, train every member, and estimate the noise variances.

        ``x`` and ``y`` are standardised with their full training mean and
        standard deviation (stored as buffers). Member :math:`i` is re-initialised
        from seed ``seed + i``, and a :class:`torch.Generator` seeded with
        ``seed + i`` draws its held-out rows (if any) and its minibatch orders,
        so the fit is a deterministic function of the data and ``seed``. The
        members are then trained by :func:`fit_regressor` and
        :math:`\\sigma^2_{\\varepsilon,i}` is set as described in the class
        docstring.

        :param x: training inputs of shape ``(n, in_features)``.
        :param y: training targets of shape ``(n,)`` or ``(n, 1)``.
        :param epochs: epochs per member (see :func:`fit_regressor`).
        :param batch_size: minibatch size, ``None`` for full batch.
        :param lr: Adam learning rate (on standardised data).
        :param weight_decay: Adam L2 coefficient.
        :param seed: non-negative base seed; member ``i`` uses ``seed + i``.
        :param progress: show a tqdm bar over members.
        :param validation_fraction: fraction in ``[0, 1)`` of rows each member
            holds out to estimate its noise variance; 0 uses the training MSE.
        :returns: ``self``, in eval mode.
        :raises TypeError: on arguments of the wrong type.
        :raises ValueError: on invalid values or shapes.
        """
        x = self._check_x(x)
        y = _check_data_tensor(y, "y")
        if y.dim() == 2 and y.shape[1] == 1:
            y = y.squeeze(1)
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y must have shape (n,) or (n, 1) with n = {x.shape[0]} rows of x, got {tuple(y.shape)}"
            )
        y = y.to(dtype=self.y_loc.dtype, device=self.y_loc.device)
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise TypeError(f"seed must be a non-negative int, got {type(seed).__name__} {seed!r}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        progress = check_flag(progress, "progress")
        if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, Real):
            raise TypeError(
                f"validation_fraction must be a number in [0, 1), got {type(validation_fraction).__name__}"
            )
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be a number in [0, 1), got {validation_fraction!r}"
            )
        n = x.shape[0]
        n_val = round(float(validation_fraction) * n) if validation_fraction > 0 else 0
        if validation_fraction > 0 and not 1 <= n_val < n:
            raise ValueError(
                f"validation_fraction={validation_fraction:g} of n={n} rows leaves an empty "
                "held-out or training part; pass more data, change the fraction, or use 0"
            )

        x_std, y_std = Standardizer.fit(x, dim=0), Standardizer.fit(y, dim=0)
        self.x_loc.copy_(x_std.loc)
        self.x_scale.copy_(x_std.scale)
        self.y_loc.copy_(y_std.loc)
        self.y_scale.copy_(y_std.scale)
        xs, ys = x_std.transform(x), y_std.transform(y)
        var_floor = torch.finfo(ys.dtype).eps

        # Each member's seed drives its initialisation, its held-out rows and its
        # minibatch orders; the members are then trained together (fit_regressors).
        generators = []
        for i in range(self.num_members):
            self._reset_member(i, seed + i)
            generators.append(torch.Generator().manual_seed(seed + i))
        rows = None
        if n_val:
            # The first draw of each member's generator (row_permutations reproduces it); the same
            # generators then give the minibatch orders.
            perms = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(xs.device)
            val_rows, rows = perms[:, :n_val], perms[:, n_val:]
        mses = fit_regressors(
            list(self.members), xs, ys.expand(self.num_members, n), rows=rows, epochs=epochs,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, generators=generators, progress=progress,
        )
        if n_val:
            with torch.no_grad():
                fitted = torch.stack([member(xs).squeeze(-1) for member in self.members])
                mses = (fitted.gather(1, val_rows) - ys[val_rows]).square().mean(1).tolist()
        variances_std = [max(mse, var_floor) for mse in mses]

        noise_std = torch.tensor(variances_std, dtype=ys.dtype, device=ys.device)
        self.noise_variances.copy_(y_std.inverse_variance(noise_std))
        self.fitted.fill_(True)
        return self.eval()

    def row_permutations(self, num_rows: int, seed: int) -> Tensor:
        """Each member's permutation of the training rows, ``(M, n)``, as :meth:`fit` draws it for
        ``seed`` (the first draw of member ``i``'s generator, seeded ``seed + i``): with
        ``validation_fraction > 0`` member ``i`` holds out the first
        ``round(validation_fraction · n)`` rows of row ``i`` and trains on the rest."""
        return torch.stack([torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed + i))
                            for i in range(self.num_members)])

    def held_out_mask(self, num_rows: int, validation_fraction: float, seed: int) -> Tensor:
        """``(M, n)`` booleans: the training rows each member did *not* train on (its held-out
        rows), as :meth:`fit` chose them for ``seed`` and ``validation_fraction``. A member's
        values there are out of sample: the disagreement a new input would see."""
        n_val = round(float(validation_fraction) * num_rows)
        if not 1 <= n_val < num_rows:
            raise ValueError(f"validation_fraction={validation_fraction:g} of {num_rows} rows holds out no row or every row")
        mask = torch.zeros(self.num_members, num_rows, dtype=torch.bool)
        mask.scatter_(1, self.row_permutations(num_rows, seed)[:, :n_val], True)
        return mask

    # ------------------------------------------------------------------ prediction

    def member_predictions(self, x: Tensor) -> Tensor:
        """Member means :math:`f_i(x_j)` in original units, shape ``(M, m)`` (no grad).

        :param x: raw inputs of shape ``(m, in_features)``.
        """
        self._check_fitted()
        xs = self.x_standardizer.transform(self._check_x(x))
        with torch.no_grad():
            out = torch.stack([member(xs).squeeze(-1) for member in self.members])
        return self.y_standardizer.inverse(out)

    def teacher_functions(self) -> list[Callable[[Tensor], Tensor]]:
        """One callable per member, ``x (m, d) -> f_i(x) (m,)`` in original units.

        This is the form in which teachers are handed to the distillation API.
        The callables evaluate without gradients and reference this module (they
        see later re-fits).
        """
        self._check_fitted()
        return [functools.partial(self._member_predict, i) for i in range(self.num_members)]


