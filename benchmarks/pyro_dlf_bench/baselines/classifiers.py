r"""Image classifiers of the classification benchmark: the CNN teacher ensemble and its distilled rivals.

Every model here maps images ``(N, C, H, W)`` to a predictive over ``c``
classes and exposes it the same way as the DLF student,
:meth:`predict` → :class:`~pyro_dlf.student.ClassificationPrediction`
(mean probabilities, total entropy, expected entropy, mutual information).
All are trained by the one loop :func:`~pyro_dlf.training.fit_networks`.

* :class:`ConvEnsemble` -- :math:`K` independent CNNs of one architecture. As
  the *teacher ensemble* (trained on labels from different initializations),
  as *small-Ens* (member :math:`k` distilled from teacher :math:`k`), as the
  *single CNN* (:math:`K = 1`, labels) and as *one-to-one KD* (:math:`K = 1`,
  distilled from the ensemble's mean prediction). Predictive: the equal
  mixture of the members' softmaxes.
* :class:`HydraClassifier` -- one shared body, :math:`K` linear heads, head
  :math:`k` distilled from teacher :math:`k` (Tran et al., 2020).
* :class:`BatchEnsembleClassifier` -- BatchEnsemble (Wen et al., 2020): shared
  convolution and dense weights modulated by rank-1 fast weights per member.
* :class:`DirichletClassifier` -- Proxy-EnD² (Ryabinin et al., 2021): one
  network whose outputs are Dirichlet concentrations, fitted to the proxy
  Dirichlet of the ensemble; closed-form entropy decomposition.

Distillation losses: member :math:`k` minimises an f-divergence
(:mod:`pyro_dlf_bench.baselines.divergences`: forward KL by default, reverse KL,
Jensen–Shannon or total variation) between the teacher's softmax and its own,
at temperature 1 -- the teacher's predictive itself, not a sharpened or
smoothed version, is what an uncertainty-preserving student must match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from pyro_dlf_bench.baselines.dirichlet import concentrations_from_logits, dirichlet_uncertainty, proxy_end2_loss
from pyro_dlf_bench.baselines.divergences import DIVERGENCES, f_divergence
from pyro_dlf_bench.baselines.students import BatchEnsembleLinear
from pyro_dlf.training import fit_networks
from pyro_dlf_bench.metrics import entropy_decomposition
from pyro_dlf._validation import check_int
from pyro_dlf.nn import ConvBody
from pyro_dlf.student import ClassificationPrediction

__all__ = [
    "ConvEnsemble",
    "HydraClassifier",
    "BatchEnsembleClassifier",
    "BatchEnsembleConv2d",
    "DirichletClassifier",
    "conv_classifier",
    "prediction_from_probs",
]


def conv_classifier(image_shape: Sequence[int], num_outputs: int, channels: Sequence[int] = (16, 32), width: int = 64) -> nn.Sequential:
    """A :class:`~pyro_dlf.nn.ConvBody` followed by a linear layer to ``num_outputs`` logits."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (channels, height, width), got {tuple(image_shape)}")
    body = ConvBody(image_shape[0], tuple(image_shape[1:]), channels, width)
    return nn.Sequential(body, nn.Linear(width, check_int(num_outputs, "num_outputs")))


def prediction_from_probs(sample_probs: Tensor) -> ClassificationPrediction:
    """Summaries of an equal mixture of categorical distributions ``(K, N, c)`` (entropies in nats)."""
    total, expected, mutual = entropy_decomposition(sample_probs)
    return ClassificationPrediction(sample_probs.mean(0), total, expected, mutual, None)


def _check_images(x: object, name: str, image_shape: tuple) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point image tensor (N, C, H, W)")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, image_shape))}), got {tuple(x.shape)}")
    return x


def _check_teacher_log_probs(t: object, name: str, num_members: Optional[int], m: int, c: int) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TypeError(f"{name} must be a float tensor of teacher log-probabilities (num_teachers, N, {c}); use logits.log_softmax(-1)")
    if t.dim() != 3 or t.shape[1] != m or t.shape[2] != c:
        raise ValueError(f"{name} must have shape (num_teachers, {m}, {c}), got {tuple(t.shape)}")
    if num_members is not None and t.shape[0] != num_members:
        raise ValueError(f"{name} holds {t.shape[0]} teachers but the model has {num_members} members (one per teacher)")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has NaN/inf entries; pass log_softmax of finite logits")
    return t


def _divergence_loss(divergence: str):
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")

    def loss(pred: Tensor, target: Tensor) -> Tensor:
        # pred: logits (K, b, ..., c); target: teacher log-probs of the same shape.
        per_row = f_divergence(target, pred.log_softmax(-1), divergence, reduction="none")
        return per_row.flatten(2).sum(2).mean(1) if per_row.dim() > 2 else per_row.mean(1)

    return loss


class _ImageClassifier(nn.Module):
    """Shared plumbing: shapes, seeded initialization, batched evaluation."""

    def __init__(self, image_shape: Sequence[int], num_classes: int, num_members: int) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (channels, height, width), got {tuple(image_shape)}")
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = check_int(num_classes, "num_classes")
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        self.num_members = check_int(num_members, "num_members")

    def _outputs(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Raw outputs on ``x`` in batches, without gradients (eval mode)."""
        x = _check_images(x, "x", self.image_shape)
        batch_size = check_int(batch_size, "batch_size")
        was = self.training
        self.eval()
        with torch.no_grad():
            out = torch.cat([self._outputs(x[s:s + batch_size]) for s in range(0, x.shape[0], batch_size)], dim=-2)
        self.train(was)
        return out

    def _distill_one_network(self, x: Tensor, teacher_log_probs: Tensor, build, view, divergence: str, epochs: int,
                             batch_size: int, lr: float, seed: int, progress: bool, desc: str):
        """Distill all members of one network (``build()``, seeded) at once: ``view(net)`` maps
        ``(b, ...)`` to ``(b, K, c)`` logits, trained against teacher log-probabilities ``(K, N, c)``."""
        x = _check_images(x, "x", self.image_shape)
        t = _check_teacher_log_probs(teacher_log_probs, "teacher_log_probs", self.num_members, x.shape[0], self.num_classes)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = build().to(x)
        fit_networks([view(self.net)], x, t.transpose(0, 1).unsqueeze(0).to(x), loss=_divergence_loss(divergence), epochs=epochs,
                     batch_size=batch_size, lr=lr, generators=[torch.Generator().manual_seed(seed)], progress=progress, desc=desc)
        return self

    def predict(self, x: Tensor, batch_size: int = 1024) -> ClassificationPrediction:
        """The predictive at ``x``: the equal mixture of the members' softmaxes (float64, so that
        entropies of confident predictions do not round to ties)."""
        return prediction_from_probs(self.evaluate(x, batch_size).double().softmax(-1))


class ConvEnsemble(_ImageClassifier):
    """:math:`K` independent CNNs (:func:`conv_classifier`) with a mixture predictive.

    :param image_shape: ``(C, H, W)``.
    :param num_classes: ``c``.
    :param num_members: :math:`K`.
    :param channels: convolution channels of each member's body.
    :param width: feature width of each member's body.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, num_members: int, channels: Sequence[int] = (16, 32), width: int = 64) -> None:
        super().__init__(image_shape, num_classes, num_members)
        self.channels, self.width = tuple(channels), int(width)
        self.members = nn.ModuleList(conv_classifier(self.image_shape, num_classes, channels, width) for _ in range(num_members))

    def _reset(self, seed: int, like: Tensor) -> list[torch.Generator]:
        """Fresh members from ``seed``, on ``like``'s device and dtype; one minibatch generator per member."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.members = nn.ModuleList(conv_classifier(self.image_shape, self.num_classes, self.channels, self.width)
                                         for _ in range(self.num_members)).to(like)
        return [torch.Generator().manual_seed(seed * 1000 + k) for k in range(self.num_members)]

    def fit(self, x: Tensor, labels: Tensor, *, epochs: int = 3, batch_size: int = 128, lr: float = 1e-3,
            weight_decay: float = 0.0, seed: int = 0, progress: bool = False) -> "ConvEnsemble":
        """Train every member on the labels (cross-entropy) from its own random initialization and minibatch order."""
        x = _check_images(x, "x", self.image_shape)
        if not isinstance(labels, Tensor) or labels.dtype != torch.long:
            raise TypeError("labels must be an int64 tensor of class indices; convert with labels.long()")
        if labels.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
        generators = self._reset(seed, x)
        y = labels.to(x.device).expand(self.num_members, -1)
        fit_networks(list(self.members), x, y, loss="cross_entropy", epochs=epochs, batch_size=batch_size, lr=lr,
                     weight_decay=weight_decay, generators=generators, progress=progress, desc="CNN ensemble")
        return self

    def distill(self, x: Tensor, teacher_log_probs: Tensor, *, divergence: str = "forward_kl", epochs: int = 20,
                batch_size: int = 128, lr: float = 1e-3, seed: int = 0, progress: bool = False) -> "ConvEnsemble":
        """Member :math:`k` minimises ``divergence``\\ (teacher :math:`k` ‖ member :math:`k`) on ``x``.

        :param teacher_log_probs: ``(K, N, c)`` -- one teacher per member; for
            one-to-one KD from the ensemble mean pass the log of the mean
            probabilities with ``K = 1``.
        """
        x = _check_images(x, "x", self.image_shape)
        t = _check_teacher_log_probs(teacher_log_probs, "teacher_log_probs", self.num_members, x.shape[0], self.num_classes)
        generators = self._reset(seed, x)
        fit_networks(list(self.members), x, t.to(x), loss=_divergence_loss(divergence), epochs=epochs,
                     batch_size=batch_size, lr=lr, generators=generators, progress=progress, desc=f"distill ({divergence})")
        return self

    def _outputs(self, x: Tensor) -> Tensor:
        return torch.stack([member(x) for member in self.members])

    def member_logits(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Each member's logits, ``(K, N, c)``."""
        return self.evaluate(x, batch_size)


class HydraClassifier(_ImageClassifier):
    """Hydra: a shared :class:`~pyro_dlf.nn.ConvBody` and :math:`K` linear heads, head :math:`k` for teacher :math:`k`."""

    def __init__(self, image_shape: Sequence[int], num_classes: int, num_members: int, channels: Sequence[int] = (8, 16), width: int = 32) -> None:
        super().__init__(image_shape, num_classes, num_members)
        self.channels, self.width = tuple(channels), int(width)
        self.net = self._build()

    def _build(self) -> nn.Sequential:
        return nn.Sequential(ConvBody(self.image_shape[0], self.image_shape[1:], self.channels, self.width),
                             nn.Linear(self.width, self.num_members * self.num_classes))

    @property
    def body(self) -> nn.Module:
        return self.net[0]

    def _outputs(self, x: Tensor) -> Tensor:
        return self.net(x).unflatten(-1, (self.num_members, self.num_classes)).transpose(0, 1)

    def distill(self, x: Tensor, teacher_log_probs: Tensor, *, divergence: str = "forward_kl", epochs: int = 20,
                batch_size: int = 128, lr: float = 1e-3, seed: int = 0, progress: bool = False) -> "HydraClassifier":
        """Head :math:`k` minimises ``divergence``\\ (teacher :math:`k` ‖ head :math:`k`); the heads' losses are summed."""
        return self._distill_one_network(x, teacher_log_probs, self._build,
                                         lambda net: _HeadsView(net, self.num_members, self.num_classes),
                                         divergence, epochs, batch_size, lr, seed, progress, "Hydra")


class _HeadsView(nn.Module):
    """``(b, ...) → (b, K, c)`` view of a net with ``K·c`` outputs (for the training loop)."""

    def __init__(self, net: nn.Module, num_members: int, num_classes: int) -> None:
        super().__init__()
        self.net, self.shape = net, (num_members, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).unflatten(-1, self.shape)


class BatchEnsembleConv2d(nn.Module):
    """BatchEnsemble 3×3 convolution: member :math:`i` uses the kernel :math:`W ∘ (s_i r_i^T)`.

    Computed as ``conv(x ∘ r_i) ∘ s_i + b_i`` (per-channel fast weights on the
    input and output channels, one shared kernel). Input ``(K, b, C, H, W)``,
    output ``(K, b, C', H, W)``; fast weights initialised with random signs.
    """

    def __init__(self, in_channels: int, out_channels: int, num_members: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.num_members = num_members
        self.r = nn.Parameter(torch.randint(0, 2, (num_members, in_channels)).float() * 2 - 1)
        self.s = nn.Parameter(torch.randint(0, 2, (num_members, out_channels)).float() * 2 - 1)
        bound = 1.0 / math.sqrt(in_channels * 9)
        self.bias = nn.Parameter(torch.empty(num_members, out_channels).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        k, b = x.shape[:2]
        h = self.conv((x * self.r[:, None, :, None, None]).flatten(0, 1)).unflatten(0, (k, b))
        return h * self.s[:, None, :, None, None] + self.bias[:, None, :, None, None]


class _BatchEnsembleCNN(nn.Module):
    def __init__(self, image_shape: tuple, num_classes: int, num_members: int, channels: Sequence[int], width: int) -> None:
        super().__init__()
        self.num_members = num_members
        convs, c_in, (height, wide) = [], image_shape[0], image_shape[1:]
        for c in channels:
            convs.append(BatchEnsembleConv2d(c_in, c, num_members))
            c_in, height, wide = c, height // 2, wide // 2
        self.convs = nn.ModuleList(convs)
        self.dense = BatchEnsembleLinear(c_in * height * wide, width, num_members)
        self.out = BatchEnsembleLinear(width, num_classes, num_members)
        self.pool, self.act = nn.MaxPool2d(2), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = x.unsqueeze(0).expand(self.num_members, *x.shape)
        for conv in self.convs:
            h = self.pool(self.act(conv(h)).flatten(0, 1))
            h = h.unflatten(0, (self.num_members, x.shape[0]))
        h = self.act(self.dense(h.flatten(2)))
        return self.out(h).transpose(0, 1)  # (b, K, c)


class BatchEnsembleClassifier(_ImageClassifier):
    """BatchEnsemble CNN (shared kernels, rank-1 fast weights), member :math:`k` distilled from teacher :math:`k`."""

    def __init__(self, image_shape: Sequence[int], num_classes: int, num_members: int, channels: Sequence[int] = (8, 16), width: int = 32) -> None:
        super().__init__(image_shape, num_classes, num_members)
        self.channels, self.width = tuple(channels), int(width)
        self.net = _BatchEnsembleCNN(self.image_shape, self.num_classes, self.num_members, self.channels, self.width)

    def _outputs(self, x: Tensor) -> Tensor:
        return self.net(x).transpose(0, 1)

    def distill(self, x: Tensor, teacher_log_probs: Tensor, *, divergence: str = "forward_kl", epochs: int = 20,
                batch_size: int = 128, lr: float = 1e-3, seed: int = 0, progress: bool = False) -> "BatchEnsembleClassifier":
        """Member :math:`k` minimises ``divergence``\\ (teacher :math:`k` ‖ member :math:`k`); losses summed over members."""
        build = lambda: _BatchEnsembleCNN(self.image_shape, self.num_classes, self.num_members, self.channels, self.width)  # noqa: E731
        return self._distill_one_network(x, teacher_log_probs, build, lambda net: net, divergence, epochs, batch_size, lr,
                                         seed, progress, "BatchEnsemble")


class DirichletClassifier(_ImageClassifier):
    """Proxy-EnD²: one CNN whose outputs are log-concentrations of a Dirichlet over class probabilities.

    Predictive: the Dirichlet mean :math:`α/α_0`; uncertainty in closed form
    (total entropy, expected entropy, mutual information) from
    :func:`~pyro_dlf_bench.baselines.dirichlet.dirichlet_uncertainty`.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (8, 16), width: int = 32) -> None:
        super().__init__(image_shape, num_classes, 1)
        self.channels, self.width = tuple(channels), int(width)
        self.net = conv_classifier(self.image_shape, num_classes, channels, width)

    def _outputs(self, x: Tensor) -> Tensor:
        return self.net(x)

    def distill(self, x: Tensor, teacher_log_probs: Tensor, *, epochs: int = 20, batch_size: int = 128, lr: float = 1e-3,
                scale_by_target_precision: bool = True, seed: int = 0, progress: bool = False) -> "DirichletClassifier":
        """Fit the Proxy-EnD² objective against all teachers' log-probabilities ``(M, N, c)``.

        :param scale_by_target_precision: divide each input's reverse KL by the
            target's precision :math:`β_0`, the form of the authors' released
            training criterion (see :func:`~pyro_dlf_bench.baselines.dirichlet.proxy_end2_loss`).
            The default: when the teachers agree closely (as on MNIST) the target
            precision is large, the unscaled KL is of order :math:`10^3`, and the
            network trains far more slowly for the same number of Adam steps.
        """
        x = _check_images(x, "x", self.image_shape)
        t = _check_teacher_log_probs(teacher_log_probs, "teacher_log_probs", None, x.shape[0], self.num_classes)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = conv_classifier(self.image_shape, self.num_classes, self.channels, self.width).to(x)

        def loss(pred: Tensor, target: Tensor) -> Tensor:
            # pred (1, b, c) log-concentrations; target (1, b, M, c) teacher log-probs.
            return proxy_end2_loss(pred[0], target[0].transpose(0, 1), reduction="mean",
                                   scale_by_target_precision=scale_by_target_precision).unsqueeze(0)

        fit_networks([self.net], x, t.transpose(0, 1).unsqueeze(0).to(x), loss=loss, epochs=epochs, batch_size=batch_size,
                     lr=lr, generators=[torch.Generator().manual_seed(seed)], progress=progress, desc="Proxy-EnD2")
        return self

    def predict(self, x: Tensor, batch_size: int = 1024) -> ClassificationPrediction:
        # float64: the mutual information is a small difference of digamma terms at large α.
        alpha = concentrations_from_logits(self.evaluate(x, batch_size).double())
        probs, total, expected, mutual = dirichlet_uncertainty(alpha)
        return ClassificationPrediction(probs, total, expected, mutual, None)
