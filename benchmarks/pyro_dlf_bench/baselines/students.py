"""One-to-one distillation baselines for regression: small ensemble, Hydra, BatchEnsemble.

Every baseline here is distilled from the same :math:`n` teachers as the DLF
student. Teacher :math:`i` provides its values :math:`f_i(x_j)` at the
:math:`m` design points :math:`x_1, \\dots, x_m` and a homoscedastic noise
variance :math:`\\sigma^2_{\\varepsilon,i}`. A student has :math:`n` members
:math:`g_1, \\dots, g_n`, and member :math:`i` imitates teacher :math:`i`
("one-to-one") by least squares on the design points:

.. math::

    \\min_\\theta \\; \\frac{1}{n m} \\sum_{i=1}^n \\sum_{j=1}^m
        \\bigl(g_{i,\\theta}(x_j) - f_i(x_j)\\bigr)^2

in standardised units: inputs are standardised with the mean and standard
deviation of the design points (per feature), targets with the mean and
standard deviation of *all* :math:`n m` teacher values pooled (one scalar
location and scale, so the relative position of the teachers is kept and a
single affine map returns every member to original units). Training uses the
library's single squared-error loop :func:`~pyro_dlf_bench.baselines.fit_regressor`
(Adam):

* :class:`SmallEnsembleStudent` -- :math:`n` independent small MLPs; member
  :math:`i` is trained alone on teacher :math:`i`'s values (its own seed and
  minibatch order).
* :class:`HydraStudent` -- one shared body MLP with :math:`n` linear heads
  (Tran et al., 2020, "Hydra: Preserving Ensemble Diversity for Model
  Distillation"); trained jointly on the summed head losses above.
* :class:`BatchEnsembleStudent` -- BatchEnsemble (Wen et al., 2020): each layer
  has one shared weight matrix :math:`W` and per-member rank-1 "fast weights"
  :math:`r_i, s_i` and bias :math:`b_i`, so member :math:`i`'s layer is
  :math:`h \\mapsto ((h \\circ r_i) W^\\top) \\circ s_i + b_i`, i.e. the weight
  :math:`W \\circ (s_i r_i^\\top)`; all members run in one batched forward and are
  trained jointly, member :math:`i` against teacher :math:`i`.

For Hydra and BatchEnsemble the joint objective is the *mean* over members of
the per-member MSE rather than the sum used in the Hydra paper; the two differ
by the constant factor :math:`n`, which Adam's update is invariant to (up to its
:math:`\\epsilon` and the coupled ``weight_decay`` term, which is therefore
effectively :math:`n` times stronger than for one network trained alone).

**Noise.** The members only learn the teachers' *mean functions*. Each member
inherits its teacher's noise variance, so every baseline's predictive is the
equal-weight Gaussian mixture

.. math::

    p(y \\mid x) = \\frac1n \\sum_{i=1}^n
        \\mathcal N\\bigl(y;\\, g_i(x),\\, \\sigma^2_{\\varepsilon,i}\\bigr),

exactly the teacher ensemble's predictive with :math:`f_i` replaced by
:math:`g_i`. The DLF student uses the same noise information: it integrates
:math:`\\sigma^2` over the inverse gamma fitted to the same
:math:`\\sigma^2_{\\varepsilon,1}, \\dots, \\sigma^2_{\\varepsilon,n}`
(:func:`pyro_dlf.noise.fit_inverse_gamma`). So differences between the DLF
student and these baselines come from how the mean functions are distilled, not
from how noise is handled.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from numbers import Integral

import torch
from torch import Tensor, nn

from pyro_dlf_bench.baselines.ensemble import MixtureRegressor, _check_data_tensor, fit_regressor, fit_regressors
from pyro_dlf._validation import check_flag, check_int, check_real
from pyro_dlf_bench.datasets.splits import Standardizer
from pyro_dlf.nn import MLP

__all__ = [
    "DistilledEnsemble",
    "SmallEnsembleStudent",
    "HydraStudent",
    "BatchEnsembleLinear",
    "BatchEnsembleStudent",
]


def _check_hidden(hidden: object, *, allow_empty: bool = True) -> tuple[int, ...]:
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(
            f"hidden must be a sequence of positive ints such as (50,), got {type(hidden).__name__} {hidden!r}"
        )
    widths = tuple(check_int(h, f"hidden[{k}]") for k, h in enumerate(hidden))
    if not widths and not allow_empty:
        raise ValueError("hidden must contain at least one width (the shared body's output), e.g. hidden=(50,)")
    return widths


def _check_activation(activation: object) -> type[nn.Module]:
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise TypeError(
            f"activation must be an nn.Module subclass such as nn.ReLU (the class, not an instance), got {activation!r}"
        )
    return activation


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"seed must be a non-negative int, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return int(seed)


# --------------------------------------------------------------------------- base class


class DistilledEnsemble(MixtureRegressor, abc.ABC):
    """Shared parts of the one-to-one distilled students (see the module docstring).

    A subclass only builds its network, :meth:`_build_net`: a module mapping
    standardised inputs ``(m, in_features)`` to standardised member outputs
    ``(m, num_members)``, column :math:`i` being member :math:`i`. It may
    override :meth:`_train` (the default trains the whole network jointly with
    one :func:`~pyro_dlf_bench.baselines.fit_regressor` call). Validation,
    standardisation, seeding, prediction and the mixture predictive live here.

    The network is stored as ``self.net``; it is built at construction under a
    fixed seed (without touching the caller's global RNG) and rebuilt from
    ``seed`` by every :meth:`fit`.

    :param in_features: input dimension :math:`d`.
    :param num_members: number of members :math:`n` (= number of teachers).
    :param hidden: hidden-layer widths.
    :param activation: activation class after every hidden layer.

    Buffers (saved in ``state_dict``): ``x_loc``/``x_scale`` ``(1, d)``,
    ``y_loc``/``y_scale`` ``(1,)`` (the pooled teacher-value standardisation),
    ``noise_variances`` ``(n,)`` (the teachers' :math:`\\sigma^2_{\\varepsilon,i}`,
    original units) and the 0-d boolean ``fitted``.
    """

    def __init__(
        self,
        in_features: int,
        num_members: int,
        hidden: Sequence[int] = (50,),
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features")
        self.num_members = check_int(num_members, "num_members")
        self.hidden = _check_hidden(hidden, allow_empty=self._allow_empty_hidden)
        self.activation = _check_activation(activation)
        self.net = self._fresh_net(seed=0)
        self._register_buffers(self.in_features, self.num_members)

    _allow_empty_hidden = True

    # ------------------------------------------------------------------ subclass hooks

    @abc.abstractmethod
    def _build_net(self) -> nn.Module:
        """A freshly initialised network ``(m, d) -> (m, n)`` (standardised units), drawn from the global CPU RNG."""

    def _train(self, xs: Tensor, ys: Tensor, *, seed: int, **train_kwargs: object) -> None:
        """Train ``self.net`` on standardised ``xs (m, d)``, ``ys (m, n)``: all members jointly."""
        fit_regressor(self.net, xs, ys, generator=torch.Generator().manual_seed(seed), **train_kwargs)

    # ------------------------------------------------------------------ helpers

    def _fresh_net(self, seed: int) -> nn.Module:
        # Under a forked CPU RNG, so the caller's global stream is untouched and
        # the initialisation does not depend on history or on the device.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self._build_net()

    def _reset_parameters(self, seed: int) -> None:
        self.net.load_state_dict(self._fresh_net(seed).state_dict())

    def _check_x(self, x: object, name: str) -> Tensor:
        x = _check_data_tensor(x, name)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            hint = (
                f"; add the feature dimension with {name}.unsqueeze(-1)"
                if x.dim() == 1 and self.in_features == 1
                else ""
            )
            raise ValueError(f"{name} must have shape (m, {self.in_features}), got {tuple(x.shape)}{hint}")
        return x.to(dtype=self.x_loc.dtype, device=self.x_loc.device)

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(
                f"{type(self).__name__} is not fitted yet; call "
                ".fit(x_design, teacher_values, teacher_noise_variances) first"
            )

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        x_design: Tensor,
        teacher_values: Tensor,
        teacher_noise_variances: Tensor,
        *,
        epochs: int = 1000,
        batch_size: int | None = None,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        seed: int = 0,
        progress: bool = True,
    ) -> DistilledEnsemble:
        """Distil member :math:`i` from teacher :math:`i` on the design points.

        The network is re-initialised from ``seed`` and trained by
        :func:`~pyro_dlf_bench.baselines.fit_regressor` (minibatch orders from a
        :class:`torch.Generator` seeded from ``seed``), so the result is a
        deterministic function of the data and ``seed``; the caller's global RNG
        is not used.

        Defaults: full-batch Adam (``batch_size=None``) with ``lr=1e-2`` on
        standardised data -- the teachers' learning rate -- for ``epochs=1000``
        steps. The targets are noiseless functions of ``x`` and the design sets
        are small (hundreds to a few thousand points), so full batches are cheap,
        make the fit independent of a minibatch order, and the only concern is
        fitting the teachers closely, which needs more steps than the teachers'
        own 200 epochs (the 1-D check in the tests reaches an RMSE of a few
        percent of the teacher spread by ~1000 full-batch steps).

        :param x_design: design points, shape ``(m, in_features)``.
        :param teacher_values: :math:`f_i(x_j)`, shape ``(num_members, m)``.
        :param teacher_noise_variances: :math:`\\sigma^2_{\\varepsilon,i} > 0`,
            shape ``(num_members,)``, in the units of ``teacher_values`` squared.
        :param epochs: passes over the design points.
        :param batch_size: minibatch size, ``None`` for full batch.
        :param lr: Adam learning rate (standardised units).
        :param weight_decay: Adam's coupled L2 coefficient.
        :param seed: non-negative seed of the initialisation and minibatch order.
        :param progress: show a tqdm bar over epochs.
        :returns: ``self``, in eval mode.
        :raises TypeError: on arguments of the wrong type or dtype.
        :raises ValueError: on NaN/Inf, mismatched shapes or non-positive variances.
        """
        x = self._check_x(x_design, "x_design")
        m, n = x.shape[0], self.num_members
        f = _check_data_tensor(teacher_values, "teacher_values")
        if f.dim() != 2 or f.shape[0] != n or f.shape[1] != m:
            raise ValueError(
                f"teacher_values must have shape (num_members, m) = ({n}, {m}) -- one row per teacher, "
                f"one column per row of x_design -- got {tuple(f.shape)}"
            )
        noise = _check_data_tensor(teacher_noise_variances, "teacher_noise_variances")
        if noise.shape != (n,):
            raise ValueError(
                f"teacher_noise_variances must have shape (num_members,) = ({n},), one per teacher, "
                f"got {tuple(noise.shape)}"
            )
        if not bool((noise > 0).all()):
            raise ValueError(
                f"teacher_noise_variances must be strictly positive, got minimum {noise.min().item():g}; "
                "floor the teachers' variance estimates (e.g. at machine epsilon)"
            )
        # Validate the training options before anything is reset.
        train_kwargs = dict(
            epochs=check_int(epochs, "epochs"),
            batch_size=None if batch_size is None else check_int(batch_size, "batch_size"),
            lr=check_real(lr, "lr", 0),
            weight_decay=check_real(weight_decay, "weight_decay", 0, low_open=False),
            progress=check_flag(progress, "progress"),
        )
        seed = _check_seed(seed)
        f = f.to(dtype=self.y_loc.dtype, device=self.y_loc.device)
        noise = noise.to(dtype=self.y_loc.dtype, device=self.y_loc.device)

        x_std = Standardizer.fit(x, dim=0)
        y_std = Standardizer.fit(f.reshape(-1), dim=0)  # pooled over teachers and points
        xs = x_std.transform(x)
        ys = y_std.transform(f.reshape(-1)).reshape(n, m).T.contiguous()  # (m, n): rows = design points

        self._reset_parameters(seed)
        self.fitted.fill_(False)
        self._train(xs, ys, seed=seed, **train_kwargs)
        self.x_loc.copy_(x_std.loc)
        self.x_scale.copy_(x_std.scale)
        self.y_loc.copy_(y_std.loc)
        self.y_scale.copy_(y_std.scale)
        self.noise_variances.copy_(noise)
        self.fitted.fill_(True)
        return self.eval()

    # ------------------------------------------------------------------ prediction

    def member_predictions(self, x: Tensor) -> Tensor:
        """Member means :math:`g_i(x_j)` in original units, shape ``(num_members, m)`` (no grad).

        :param x: raw inputs of shape ``(m, in_features)``.
        """
        self._check_fitted()
        xs = self.x_standardizer.transform(self._check_x(x, "x"))
        with torch.no_grad():
            out = self.net(xs).T
        return self.y_standardizer.inverse(out)


# --------------------------------------------------------------------------- small ensemble


class _MemberStack(nn.Module):
    """``n`` independent ``MLP(d, hidden, 1)``; outputs concatenated to ``(m, n)``."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([member(x) for member in self.members], dim=-1)


class SmallEnsembleStudent(DistilledEnsemble):
    """:math:`n` independent small MLPs, member :math:`i` distilled from teacher :math:`i`.

    Member :math:`i` is ``MLP(in_features, hidden, 1)`` (one hidden layer of 50
    by default), trained on its own by
    :func:`~pyro_dlf_bench.baselines.fit_regressor` with minibatch orders from seed
    ``seed + i``. The members are ``self.members``.
    """

    def _build_net(self) -> nn.Module:
        return _MemberStack([MLP(self.in_features, self.hidden, 1, self.activation) for _ in range(self.num_members)])

    @property
    def members(self) -> nn.ModuleList:
        """The :math:`n` member networks (standardised units)."""
        return self.net.members

    def _train(self, xs: Tensor, ys: Tensor, *, seed: int, **train_kwargs: object) -> None:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(self.num_members)]
        fit_regressors(list(self.members), xs, ys.T, generators=generators, **train_kwargs)


# --------------------------------------------------------------------------- Hydra


class HydraStudent(DistilledEnsemble):
    """Hydra (Tran et al., 2020): one shared body MLP and :math:`n` linear heads.

    The network is ``MLP(in_features, hidden, num_members)``: everything up to
    the last hidden activation is the shared body (:attr:`body`, one hidden
    layer of 50 by default), and the last linear layer, of shape
    ``(num_members, hidden[-1])``, is the :math:`n` linear heads stacked
    (:attr:`heads`; row :math:`i` is head :math:`i`). Head :math:`i` is
    distilled from teacher :math:`i`; body and heads are trained jointly.
    ``hidden`` must be non-empty.
    """

    _allow_empty_hidden = False

    def _build_net(self) -> nn.Module:
        return MLP(self.in_features, self.hidden, self.num_members, self.activation)

    @property
    def body(self) -> nn.Sequential:
        """The shared body: standardised ``x (m, d)`` to features ``(m, hidden[-1])``.

        A new :class:`torch.nn.Sequential` holding the network's own layers
        (parameters shared, not copied).
        """
        return nn.Sequential(*list(self.net)[:-1])

    @property
    def heads(self) -> nn.Linear:
        """The :math:`n` linear heads as one ``Linear(hidden[-1], num_members)``."""
        return self.net[-1]


# --------------------------------------------------------------------------- BatchEnsemble


class BatchEnsembleLinear(nn.Module):
    """BatchEnsemble dense layer (Wen et al., 2020) for ``num_members`` members at once.

    Parameters: the shared ("slow") ``weight`` :math:`W` of shape ``(out, in)``
    (``nn.Linear``'s layout and initialisation), the per-member fast weights
    ``r`` ``(n, in)`` and ``s`` ``(n, out)``, and the per-member ``bias``
    :math:`b` ``(n, out)``. Member :math:`i` computes

    .. math::

        h \\mapsto \\bigl((h \\circ r_i) W^\\top\\bigr) \\circ s_i + b_i
        = h \\bigl(W \\circ s_i r_i^\\top\\bigr)^\\top + b_i,

    a dense layer with the rank-1-modulated weight :math:`W \\circ (s_i r_i^\\top)`.
    :math:`r_i, s_i` are initialised with random signs :math:`\\pm 1`
    (``fast_weight_init="random_sign"``) or :math:`\\mathcal N(1, 0.5^2)`
    (``"normal"``), the two choices of the paper; the biases like
    ``nn.Linear``'s, independently per member.

    :meth:`forward` takes ``(n, m, in)`` (row block :math:`i` for member
    :math:`i`) and returns ``(n, m, out)``.
    """

    FAST_WEIGHT_INITS = ("random_sign", "normal")

    def __init__(self, in_features: int, out_features: int, num_members: int, fast_weight_init: str = "random_sign"):
        super().__init__()
        self.in_features = check_int(in_features, "in_features")
        self.out_features = check_int(out_features, "out_features")
        self.num_members = check_int(num_members, "num_members")
        if fast_weight_init not in self.FAST_WEIGHT_INITS:
            raise ValueError(f"fast_weight_init must be one of {self.FAST_WEIGHT_INITS}, got {fast_weight_init!r}")
        self.fast_weight_init = fast_weight_init
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.r = nn.Parameter(torch.empty(self.num_members, self.in_features))
        self.s = nn.Parameter(torch.empty(self.num_members, self.out_features))
        self.bias = nn.Parameter(torch.empty(self.num_members, self.out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise from the global RNG (see the class docstring)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            for fast in (self.r, self.s):
                if self.fast_weight_init == "random_sign":
                    fast.copy_(torch.randint(0, 2, fast.shape).to(fast) * 2 - 1)
                else:
                    fast.normal_(1.0, 0.5)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[0] != self.num_members or x.shape[2] != self.in_features:
            raise ValueError(
                f"BatchEnsembleLinear expects input of shape ({self.num_members}, m, {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        return (x * self.r.unsqueeze(1)) @ self.weight.T * self.s.unsqueeze(1) + self.bias.unsqueeze(1)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_members={self.num_members}, fast_weight_init={self.fast_weight_init!r}"
        )


class _BatchEnsembleNet(nn.Module):
    """Stack of :class:`BatchEnsembleLinear` layers: ``(m, d) -> (m, n)`` in one batched forward."""

    def __init__(self, layers: Sequence[BatchEnsembleLinear], activation: type[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.act = activation()
        self.num_members = layers[0].num_members

    def forward(self, x: Tensor) -> Tensor:
        # Every member sees the same inputs: tile the batch n times (a view).
        h = x.unsqueeze(0).expand(self.num_members, *x.shape)
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k < len(self.layers) - 1:
                h = self.act(h)
        return h.squeeze(-1).T  # (n, m, 1) -> (m, n)


class BatchEnsembleStudent(DistilledEnsemble):
    """BatchEnsemble (Wen et al., 2020) with member :math:`i` distilled from teacher :math:`i`.

    An MLP of :class:`BatchEnsembleLinear` layers (widths ``in_features ->
    hidden... -> 1``, activation after each hidden layer) whose :math:`n`
    members share the weight matrices and differ by rank-1 fast weights and
    biases; all members are evaluated in one batched forward and trained
    jointly. Per layer it has :math:`\\text{in}\\cdot\\text{out} +
    n(\\text{in} + 2\\,\\text{out})` parameters against
    :math:`n(\\text{in}\\cdot\\text{out} + \\text{out})` for :math:`n` separate
    networks, a saving only where the weight matrices dominate (wide layers:
    for a 1-input, 1x50 network there is none).

    :param fast_weight_init: ``"random_sign"`` (default) or ``"normal"``, see
        :class:`BatchEnsembleLinear`.
    """

    def __init__(
        self,
        in_features: int,
        num_members: int,
        hidden: Sequence[int] = (50,),
        activation: type[nn.Module] = nn.ReLU,
        fast_weight_init: str = "random_sign",
    ) -> None:
        if fast_weight_init not in BatchEnsembleLinear.FAST_WEIGHT_INITS:
            raise ValueError(
                f"fast_weight_init must be one of {BatchEnsembleLinear.FAST_WEIGHT_INITS}, got {fast_weight_init!r}"
            )
        self.fast_weight_init = fast_weight_init
        super().__init__(in_features, num_members, hidden, activation)

    def _build_net(self) -> nn.Module:
        widths = (self.in_features, *self.hidden, 1)
        layers = [
            BatchEnsembleLinear(a, b, self.num_members, self.fast_weight_init) for a, b in zip(widths[:-1], widths[1:])
        ]
        return _BatchEnsembleNet(layers, self.activation)

    @property
    def layers(self) -> nn.ModuleList:
        """The :class:`BatchEnsembleLinear` layers, input to output."""
        return self.net.layers
