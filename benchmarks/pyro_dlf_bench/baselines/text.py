r"""Text classifiers of the language-model benchmark: the LoRA teacher ensemble and its distilled rivals.

Every model maps token ids ``(N, L)`` to a predictive over ``c`` classes and
exposes it as the DLF student does, :meth:`predict` →
:class:`~pyro_dlf.student.ClassificationPrediction`. Each is built from an
*encoder factory*, ``factory(k) → TextEncoder`` (a fresh encoder per member
``k``, e.g. MiniLM with LoRA adapters for teacher ``k``, or its first three
layers for a student), and trained by the one loop
:func:`~pyro_dlf.training.fit_networks` (``vectorize=False``: one
transformer at a time, plain module calls).

* :class:`TextEnsemble` -- :math:`K` encoders, each with a linear head on its
  pooled features. The *teacher ensemble* (:meth:`~TextEnsemble.fit` on labels
  from different LoRA initializations and data orders), *small-Ens* (member
  :math:`k` distilled from teacher :math:`k`) and *one-to-one KD*
  (:math:`K = 1`, distilled from the ensemble mean with an f-divergence).
* :class:`TextHydra` -- one encoder, :math:`K` linear heads (Tran et al., 2020).
* :class:`TextBatchEnsemble` -- BatchEnsemble (Wen et al., 2020) of one
  encoder: every dense map ``W`` of its transformer layers becomes the
  member-wise ``W ∘ (s_k r_k^T)`` with a member bias, the head a
  :class:`~pyro_dlf_bench.baselines.students.BatchEnsembleLinear`. The fast weights
  start at :math:`\mathcal N(1, 0.1^2)`, close to one: the encoder is
  pretrained, and the random signs used from scratch would scramble its
  features. Only the fast weights, the member biases and the head train (the
  pretrained weights stay frozen): the rank-1 fast weights are each member's
  adapter, the BatchEnsemble analogue of the LoRA adapters the other students
  train. Give it an encoder without LoRA adapters.

The distillation losses are those of the image zoo
(:mod:`pyro_dlf_bench.baselines.classifiers`): member :math:`k` minimises an
f-divergence between teacher :math:`k`'s softmax and its own, at temperature 1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn

from pyro_dlf_bench.baselines.classifiers import _check_teacher_log_probs, _divergence_loss, prediction_from_probs
from pyro_dlf_bench.baselines.students import BatchEnsembleLinear
from pyro_dlf.training import fit_networks
from pyro_dlf._validation import check_int
from pyro_dlf.student import ClassificationPrediction
from pyro_dlf_bench.text_encoder import TextEncoder

__all__ = ["EncoderClassifier", "TextEnsemble", "TextHydra", "TextBatchEnsemble", "BatchEnsembleDense", "check_token_ids",
           "EVAL_BATCH"]

#: Texts per chunk whenever a model is evaluated without gradients (predictions and each fit's final loss).
#: BatchEnsemble runs its K members on K copies of a chunk, so a whole design set in one chunk would hold
#: K × texts × tokens × the encoder's widest layer in memory at once.
EVAL_BATCH = 256

EncoderFactory = Callable[[int], TextEncoder]


def check_token_ids(ids: object, name: str = "ids") -> Tensor:
    """Token ids: a non-empty int64 tensor ``(N, L)``."""
    if not isinstance(ids, Tensor) or ids.dtype != torch.long:
        kind = type(ids).__name__ if not isinstance(ids, Tensor) else str(ids.dtype)
        raise TypeError(f"{name} must be an int64 tensor of token ids (N, L), got {kind}; use pyro_dlf_bench.text_encoder.tokenize")
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, L) with N, L >= 1, got {tuple(ids.shape)}")
    return ids


class EncoderClassifier(nn.Module):
    """A :class:`~pyro_dlf_bench.text_encoder.TextEncoder` and a linear head of ``num_heads · c`` logits.

    ``forward(ids)`` gives ``(b, c)`` for one head, ``(b, num_heads, c)`` for several.
    """

    def __init__(self, encoder: TextEncoder, num_classes: int, num_heads: int = 1) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes, self.num_heads = num_classes, num_heads
        self.head = nn.Linear(encoder.features, num_heads * num_classes)

    def forward(self, ids: Tensor) -> Tensor:
        logits = self.head(self.encoder(ids))
        return logits if self.num_heads == 1 else logits.unflatten(-1, (self.num_heads, self.num_classes))


class _TextClassifier(nn.Module):
    """Shared plumbing: seeded construction, batched evaluation, the mixture predictive."""

    def __init__(self, factory: EncoderFactory, num_classes: int, num_members: int) -> None:
        super().__init__()
        if not callable(factory):
            raise TypeError("factory must be a callable k -> TextEncoder (a fresh encoder for member k)")
        self.factory = factory
        self.num_classes = check_int(num_classes, "num_classes")
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        self.num_members = check_int(num_members, "num_members")

    def _outputs(self, ids: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Logits ``(K, b, c)``."""
        raise NotImplementedError

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def evaluate(self, ids: Tensor, batch_size: Optional[int] = None) -> Tensor:
        """Logits ``(K, N, c)`` in chunks of ``batch_size`` texts (default :data:`EVAL_BATCH`), without
        gradients (eval mode)."""
        ids = check_token_ids(ids)
        batch_size = EVAL_BATCH if batch_size is None else check_int(batch_size, "batch_size")
        was = self.training
        self.eval()
        with torch.no_grad():
            device = self._device()
            out = torch.cat([self._outputs(ids[s:s + batch_size].to(device)) for s in range(0, ids.shape[0], batch_size)], dim=1)
        self.train(was)
        return out

    def member_logits(self, ids: Tensor, batch_size: Optional[int] = None) -> Tensor:
        """Each member's logits, ``(K, N, c)``."""
        return self.evaluate(ids, batch_size)

    def predict(self, ids: Tensor, batch_size: Optional[int] = None) -> ClassificationPrediction:
        """The equal mixture of the members' softmaxes (float64 entropies)."""
        return prediction_from_probs(self.evaluate(ids, batch_size).double().softmax(-1))

    def _targets(self, ids: Tensor, teacher_log_probs: Tensor, num_members: Optional[int]) -> Tensor:
        ids = check_token_ids(ids)
        return _check_teacher_log_probs(teacher_log_probs, "teacher_log_probs", num_members, ids.shape[0], self.num_classes)


class TextEnsemble(_TextClassifier):
    """:math:`K` independent encoder classifiers (``factory(k)`` for member ``k``) with a mixture predictive.

    :param factory: ``k → TextEncoder``, called once per member on every (re)build, under the seed ``1000·seed + k``.
    :param num_classes: ``c``.
    :param num_members: :math:`K`.
    :param first_member: the global index of member 0: members ``first_member … first_member + K − 1`` of a
        larger ensemble, with exactly their initialization and data order (an ensemble trained in parts,
        e.g. one member per process or per session, equals the one trained at once).
    """

    def __init__(self, factory: EncoderFactory, num_classes: int, num_members: int, first_member: int = 0) -> None:
        super().__init__(factory, num_classes, num_members)
        if isinstance(first_member, bool) or not isinstance(first_member, int) or first_member < 0:
            raise ValueError(f"first_member must be a non-negative int, got {first_member!r}")
        self.first_member = first_member
        self.members = nn.ModuleList()

    def _reset(self, seed: int, device) -> list[torch.Generator]:
        members, indices = [], range(self.first_member, self.first_member + self.num_members)
        for k in indices:
            with torch.random.fork_rng():
                torch.manual_seed(seed * 1000 + k)
                members.append(EncoderClassifier(self.factory(k), self.num_classes))
        self.members = nn.ModuleList(members).to(device)
        return [torch.Generator().manual_seed(seed * 1000 + k) for k in indices]

    def fit(self, ids: Tensor, labels: Tensor, *, epochs: int = 2, batch_size: int = 32, lr: float = 1e-3,
            weight_decay: float = 0.0, seed: int = 0, progress: bool = False) -> "TextEnsemble":
        """Train every member on the labels (cross-entropy), from its own initialization and data order."""
        ids = check_token_ids(ids)
        if not isinstance(labels, Tensor) or labels.dtype != torch.long or labels.shape != (ids.shape[0],):
            raise TypeError(f"labels must be an int64 tensor of shape ({ids.shape[0]},); convert with labels.long()")
        generators = self._reset(seed, ids.device)
        self._fit_members(seed, generators, ids, labels.expand(self.num_members, -1), "cross_entropy", epochs, batch_size, lr,
                          weight_decay, progress, "text ensemble")
        return self

    def _fit_members(self, seed, generators, ids, targets, loss, epochs, batch_size, lr, weight_decay, progress, desc) -> None:
        """Each member alone, its dropout noise from its own seed: a member trains the same whether the
        ensemble is trained at once or in parts (``first_member``)."""
        for j, (member, generator) in enumerate(zip(self.members, generators)):
            with torch.random.fork_rng():
                torch.manual_seed(seed * 1000 + self.first_member + j + 500_000)
                fit_networks([member], ids, targets[j:j + 1], loss=loss, epochs=epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, generators=[generator], progress=progress,
                             desc=desc if self.num_members == 1 else f"{desc} {j + 1}/{self.num_members}", vectorize=False,
                             eval_batch_size=EVAL_BATCH)

    def distill(self, ids: Tensor, teacher_log_probs: Tensor, *, divergence: str = "forward_kl", epochs: int = 2,
                batch_size: int = 32, lr: float = 1e-3, seed: int = 0, progress: bool = False) -> "TextEnsemble":
        """Member :math:`k` minimises ``divergence``\\ (teacher :math:`k` ‖ member :math:`k`); ``(K, N, c)``
        log-probabilities (for one-to-one KD: the log of the ensemble's mean probabilities, ``K = 1``)."""
        t = self._targets(ids, teacher_log_probs, self.num_members)
        generators = self._reset(seed, ids.device)
        self._fit_members(seed, generators, ids, t.to(ids.device), _divergence_loss(divergence), epochs, batch_size, lr, 0.0,
                          progress, f"distill ({divergence})")
        return self

    def _outputs(self, ids: Tensor) -> Tensor:
        return torch.stack([member(ids) for member in self.members])


class TextHydra(_TextClassifier):
    """Hydra: one encoder (``factory(0)``) and :math:`K` linear heads, head :math:`k` for teacher :math:`k`."""

    def __init__(self, factory: EncoderFactory, num_classes: int, num_members: int) -> None:
        super().__init__(factory, num_classes, num_members)
        self.net: Optional[EncoderClassifier] = None

    def distill(self, ids: Tensor, teacher_log_probs: Tensor, *, divergence: str = "forward_kl", epochs: int = 2,
                batch_size: int = 32, lr: float = 1e-3, seed: int = 0, progress: bool = False) -> "TextHydra":
        """Head :math:`k` minimises ``divergence``\\ (teacher :math:`k` ‖ head :math:`k`); losses summed over heads."""
        t = self._targets(ids, teacher_log_probs, self.num_members)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = EncoderClassifier(self.factory(0), self.num_classes, self.num_members).to(ids.device)
        fit_networks([self.net], ids, t.transpose(0, 1).unsqueeze(0).to(ids.device), loss=_divergence_loss(divergence),
                     epochs=epochs, batch_size=batch_size, lr=lr, generators=[torch.Generator().manual_seed(seed)],
                     progress=progress, desc="Hydra", vectorize=False, eval_batch_size=EVAL_BATCH)
        return self

    def _outputs(self, ids: Tensor) -> Tensor:
        return self.net(ids).transpose(0, 1)


class BatchEnsembleDense(nn.Module):
    """A pretrained ``nn.Linear`` as a BatchEnsemble layer of ``K`` members.

    Member ``k`` computes ``((h ∘ r_k) W^T) ∘ s_k + b_k``; ``W`` is the
    pretrained weight (shared), ``b_k`` starts at the pretrained bias, ``r_k``,
    ``s_k`` at :math:`\\mathcal N(1, σ^2)`. Inputs are member-major: the first
    dimension holds ``K`` blocks of equal size, block ``k`` for member ``k``.
    """

    def __init__(self, linear: nn.Linear, num_members: int, fast_weight_std: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())
        bias = linear.bias.detach().clone() if linear.bias is not None else torch.zeros(linear.out_features)
        self.bias = nn.Parameter(bias.expand(num_members, -1).clone())
        self.r = nn.Parameter(1 + fast_weight_std * torch.randn(num_members, linear.in_features))
        self.s = nn.Parameter(1 + fast_weight_std * torch.randn(num_members, linear.out_features))
        self.num_members = num_members

    def forward(self, h: Tensor) -> Tensor:
        blocks = h.unflatten(0, (self.num_members, -1))  # (K, b, ..., in)
        shape = (self.num_members,) + (1,) * (blocks.dim() - 2) + (-1,)
        out = torch.nn.functional.linear(blocks * self.r.view(shape), self.weight) * self.s.view(shape) + self.bias.view(shape)
        return out.flatten(0, 1)


class _BatchEnsembleEncoderClassifier(nn.Module):
    def __init__(self, encoder: TextEncoder, num_classes: int, num_members: int, fast_weight_std: float) -> None:
        super().__init__()
        self.num_members = num_members
        for layer in encoder.transformer.encoder.layer:
            for parent in list(layer.modules()):
                for child_name, child in list(parent.named_children()):
                    if isinstance(child, nn.Linear):
                        setattr(parent, child_name, BatchEnsembleDense(child, num_members, fast_weight_std))
        self.encoder = encoder
        self.head = BatchEnsembleLinear(encoder.features, num_classes, num_members, fast_weight_init="normal")
        # Each member's adapter: its fast weights and biases (and the head); the pretrained weights stay frozen.
        for module in self.encoder.modules():
            for name, p in module.named_parameters(recurse=False):
                p.requires_grad_(isinstance(module, BatchEnsembleDense) and name != "weight")

    def forward(self, ids: Tensor) -> Tensor:
        b = ids.shape[0]
        features = self.encoder(ids.repeat(self.num_members, 1))  # member-major blocks
        return self.head(features.unflatten(0, (self.num_members, b))).transpose(0, 1)  # (b, K, c)


class TextBatchEnsemble(_TextClassifier):
    """BatchEnsemble of one encoder (``factory(0)``, without LoRA adapters): rank-1 fast weights per member
    in every dense map of its transformer layers (trained; the pretrained weights frozen) and in the head;
    member :math:`k` distilled from teacher :math:`k`.

    :param fast_weight_std: spread of the fast weights around one at initialization.
    """

    def __init__(self, factory: EncoderFactory, num_classes: int, num_members: int, fast_weight_std: float = 0.1) -> None:
        super().__init__(factory, num_classes, num_members)
        if not fast_weight_std >= 0:
            raise ValueError(f"fast_weight_std must be >= 0, got {fast_weight_std!r}")
        self.fast_weight_std = float(fast_weight_std)
        self.net: Optional[_BatchEnsembleEncoderClassifier] = None

    def distill(self, ids: Tensor, teacher_log_probs: Tensor, *, divergence: str = "forward_kl", epochs: int = 2,
                batch_size: int = 32, lr: float = 1e-3, seed: int = 0, progress: bool = False) -> "TextBatchEnsemble":
        """Member :math:`k` minimises ``divergence``\\ (teacher :math:`k` ‖ member :math:`k`); losses summed."""
        t = self._targets(ids, teacher_log_probs, self.num_members)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = _BatchEnsembleEncoderClassifier(copy.deepcopy(self.factory(0)), self.num_classes, self.num_members,
                                                       self.fast_weight_std).to(ids.device)
        fit_networks([self.net], ids, t.transpose(0, 1).unsqueeze(0).to(ids.device), loss=_divergence_loss(divergence),
                     epochs=epochs, batch_size=batch_size, lr=lr, generators=[torch.Generator().manual_seed(seed)],
                     progress=progress, desc="BatchEnsemble", vectorize=False, eval_batch_size=EVAL_BATCH)
        return self

    def _outputs(self, ids: Tensor) -> Tensor:
        return self.net(ids).transpose(0, 1)
