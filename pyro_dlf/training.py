"""The library's one training loop: K networks of one architecture, each on its own targets, trained together.

Every network the baselines train -- regression teachers and students, CNN
teachers, one-to-one distilled students, Hydra, BatchEnsemble, the Dirichlet
student -- goes through :func:`fit_networks`; only the per-network loss
differs (squared error, cross-entropy on labels, an f-divergence to a teacher,
a Dirichlet KL). The loss is a callable of the stacked predictions and targets,
or one of the names in :data:`LOSSES`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn

from pyro_dlf._progress import progress_bar
from pyro_dlf._validation import check_flag, check_int, check_networks, check_real, check_training_inputs

__all__ = ["fit_networks", "LOSSES", "squared_error", "label_cross_entropy"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _match_prediction(pred: Tensor, y: Tensor) -> Tensor:
    """Return ``pred`` shaped like ``y``; a trailing output dim of 1 is squeezed."""
    if pred.shape == y.shape:
        return pred
    if pred.shape == (*y.shape, 1):
        return pred.squeeze(-1)
    raise ValueError(
        f"net output of shape {tuple(pred.shape)} does not match y of shape {tuple(y.shape)}; "
        "y must have the net's output shape, or drop its trailing size-1 output dimension"
    )


def squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """Per-network mean squared error: ``pred``, ``target`` ``(K, b, ...)`` → ``(K,)``."""
    return (_match_prediction(pred, target) - target).square().flatten(1).mean(1)


def label_cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    """Per-network mean cross-entropy of logits ``(K, b, c)`` against integer labels ``(K, b)`` → ``(K,)``."""
    if pred.dim() != 3 or target.shape != pred.shape[:2]:
        raise ValueError(f"cross_entropy needs logits (K, b, c) and labels (K, b), got {tuple(pred.shape)} and {tuple(target.shape)}")
    return -pred.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1).mean(1)


LOSSES: dict[str, LossFn] = {"mse": squared_error, "cross_entropy": label_cross_entropy}


def fit_networks(
    nets: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    loss: Union[str, LossFn] = "mse",
    rows: Tensor | None = None,
    epochs: int = 200,
    batch_size: int | None = None,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    generators: Sequence[torch.Generator | None] | None = None,
    progress: bool = False,
    desc: str = "fit_networks",
    eval_batch_size: int = 4096,
    vectorize: bool = True,
) -> list[float]:
    """Train :math:`K` networks of one architecture at once, each on its own targets and rows.

    Network :math:`k` minimises its own loss :math:`L_k(\\theta_k)`, exactly as it
    would trained alone: it visits its rows ``rows[k]`` once per epoch in
    minibatches from a fresh permutation drawn from ``generators[k]`` and takes
    one Adam step per minibatch on the minibatch mean loss.

    The networks are evaluated together: their parameters are stacked
    (:func:`torch.func.stack_module_state`) and the shared architecture is
    vectorized over them with :func:`torch.func.vmap`, so one batched operation
    replaces :math:`K` small ones. The summed loss :math:`\\sum_k L_k(\\theta_k)`
    has gradient :math:`\\nabla_{\\theta_k} L_k` in block :math:`k`, and Adam acts
    elementwise, so each network follows the same trajectory as when trained
    alone (up to floating-point summation order).

    :param nets: :math:`K \\ge 1` modules with identical parameter names and
        shapes, on one device and dtype, without batch-statistics layers. They
        are updated in place.
    :param x: shared inputs, shape ``(n, ...)``.
    :param y: targets, shape ``(K, n, ...)``: ``y[k]`` for network ``k`` (use
        ``y.expand(K, *y.shape)`` for common targets; it is a view). Floating
        point, or int64 labels for ``loss="cross_entropy"``.
    :param loss: ``"mse"`` (mean squared error), ``"cross_entropy"`` (logits vs
        labels), or a callable ``(pred (K, b, ...), target (K, b, ...)) → (K,)``
        returning each network's minibatch *mean* loss.
    :param rows: optional row indices of shape ``(K, r)``: network ``k`` trains on
        ``x[rows[k]]``, ``y[k, rows[k]]``. ``None`` trains every network on all rows.
    :param epochs: passes over each network's rows.
    :param batch_size: minibatch size, ``None`` (or ``>= r``) for full batch.
    :param lr: Adam learning rate.
    :param weight_decay: Adam's coupled L2 coefficient.
    :param generators: ``K`` sources of the minibatch permutations (entries may
        be ``None`` for the global RNG); ``None`` uses the global RNG for all.
    :param progress: show a tqdm bar over epochs (label ``desc``).
    :param eval_batch_size: rows per chunk when the final loss is evaluated
        (bounds memory for image networks).
    :param vectorize: stack the networks and run them with ``vmap`` (small
        networks); ``False`` trains them one after the other with plain module
        calls -- the same minibatches, steps and result, for large modules
        (transformers) that gain nothing from stacking or do not support
        ``torch.func``. ``x`` may then be int64 (token ids).
    :returns: each network's final loss on its own rows (no gradients): the
        row-weighted mean of the chunk losses.
    :raises TypeError: on arguments of the wrong type or dtype.
    :raises ValueError: on invalid values, mismatched shapes or architectures.
    :raises RuntimeError: if the loss diverges to NaN/inf.
    """
    a = _arguments(nets, x, y, loss, rows, epochs, batch_size, lr, weight_decay, generators, progress, eval_batch_size, vectorize)
    if not a.vectorize:
        return _fit_one_by_one(nets, a.x, a.y, a.loss_fn, a.rows, a.epochs, a.bs, a.r, a.eval_bs, a.lr, a.weight_decay,
                               a.generators, a.progress, desc)
    return _fit_vectorized(nets, a, desc)


@dataclass
class _Arguments:
    """:func:`fit_networks`' arguments, checked."""

    x: Tensor
    y: Tensor
    loss_fn: LossFn
    rows: Optional[Tensor]
    epochs: int
    bs: int
    r: int
    eval_bs: int
    lr: float
    weight_decay: float
    generators: list
    progress: bool
    vectorize: bool


def _loss_function(loss) -> LossFn:
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable (pred, target) -> (K,), got {loss!r}")
        return LOSSES[loss]
    if callable(loss):
        return loss
    raise TypeError(f"loss must be a name in {sorted(LOSSES)} or a callable, got {type(loss).__name__}")


def _arguments(nets, x, y, loss, rows, epochs, batch_size, lr, weight_decay, generators, progress, eval_batch_size,
               vectorize) -> _Arguments:
    check_networks(nets)
    loss_fn = _loss_function(loss)
    num = len(nets)
    vectorize = check_flag(vectorize, "vectorize")
    x = check_training_inputs(x, "x", integer_ok=not vectorize)
    y = check_training_inputs(y, "y", integer_ok=loss_fn is label_cross_entropy)
    n = x.shape[0]
    if y.dim() < 2 or y.shape[0] != num or y.shape[1] != n:
        raise ValueError(
            f"y must have shape (len(nets), n, ...) = ({num}, {n}, ...), one row block per net, got {tuple(y.shape)}"
        )
    ref = next(nets[0].parameters())
    for name, t in (("x", x), ("y", y)):
        if t.is_floating_point() and t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but net has {ref.dtype}; convert with {name}.to({ref.dtype})")
        if t.device != ref.device:
            raise ValueError(
                f"{name} is on {t.device} but net is on {ref.device}; move it with {name}.to('{ref.device}')"
            )
    if rows is not None:
        if not isinstance(rows, Tensor) or rows.dtype != torch.long or rows.dim() != 2 or rows.shape[0] != num:
            raise ValueError(f"rows must be a LongTensor of shape (len(nets), r) = ({num}, r) or None")
        if rows.shape[1] == 0 or bool((rows < 0).any()) or bool((rows >= n).any()):
            raise ValueError(f"rows must hold at least one index per net, each in [0, {n})")
        rows = rows.to(x.device)
    r = n if rows is None else rows.shape[1]
    epochs = check_int(epochs, "epochs")
    bs = r if batch_size is None else min(check_int(batch_size, "batch_size"), r)
    eval_bs = check_int(eval_batch_size, "eval_batch_size")
    lr = check_real(lr, "lr", 0)
    weight_decay = check_real(weight_decay, "weight_decay", 0, low_open=False)
    if generators is None:
        generators = [None] * num
    if len(generators) != num or any(g is not None and not isinstance(g, torch.Generator) for g in generators):
        raise TypeError(f"generators must be None or a sequence of {num} torch.Generator (or None entries)")
    progress = check_flag(progress, "progress")
    return _Arguments(x, y, loss_fn, rows, epochs, bs, r, eval_bs, lr, weight_decay, list(generators), progress, vectorize)


def _fit_vectorized(nets, a: _Arguments, desc: str) -> list[float]:
    """The networks stacked and trained as one vectorized module (see :func:`fit_networks`)."""
    x, y, loss_fn, rows, epochs, bs, r, eval_bs = a.x, a.y, a.loss_fn, a.rows, a.epochs, a.bs, a.r, a.eval_bs
    num, n, generators, progress = len(nets), x.shape[0], a.generators, a.progress
    was_training = [net.training for net in nets]
    params, buffers = torch.func.stack_module_state(list(nets))
    trainable = {name for name, p in nets[0].named_parameters() if p.requires_grad}
    for name in params:
        params[name].requires_grad_(name in trainable)
    # A parameter-free copy of the architecture to call functionally (the stacked
    # tensors are supplied per call).
    skeleton = copy.deepcopy(nets[0]).to("meta")
    skeleton.train()

    def forward_one(p: dict, b: dict, xb: Tensor) -> Tensor:
        return torch.func.functional_call(skeleton, (p, b), (xb,))

    batched = torch.func.vmap(forward_one, in_dims=(0, 0, 0))
    shared = torch.func.vmap(forward_one, in_dims=(0, 0, None))
    index = torch.arange(num, device=x.device).unsqueeze(-1)

    def loss_on(idx: Tensor | None) -> Tensor:
        """Per-net loss on row indices ``idx (K, b)``; ``None`` means all rows."""
        if idx is None:
            return loss_fn(shared(params, buffers, x), y)
        return loss_fn(batched(params, buffers, x[idx]), y[index, idx])

    optimizer = torch.optim.Adam([params[name] for name in params if name in trainable], lr=a.lr, weight_decay=a.weight_decay)
    bar = progress_bar(range(epochs), desc=desc, enabled=progress)
    for _ in bar:
        if bs == r:
            # Full batch: the mean gradient does not depend on row order, so skip
            # the permutations (and keep the generators' states untouched).
            batches: list[Tensor | None] = [rows]
        else:
            perms = torch.stack([
                torch.randperm(r, generator=g, device=g.device if g is not None else "cpu") for g in generators
            ]).to(x.device)
            order = perms if rows is None else rows.gather(1, perms)
            batches = list(order.split(bs, dim=1))
        for idx in batches:
            optimizer.zero_grad(set_to_none=True)
            value = loss_on(idx)
            value.sum().backward()
            optimizer.step()
        loss_value = value.mean().item()
        if not math.isfinite(loss_value):
            raise RuntimeError(f"training loss became {loss_value}; lower lr (now {a.lr:g}) or standardise x and y")
        if progress:
            bar.set_postfix(loss=f"{loss_value:.4g}")

    skeleton.eval()
    with torch.no_grad():
        if r <= eval_bs:
            final = loss_on(rows)
        else:
            # Chunked: a mean loss over all rows is the row-weighted mean of chunk means.
            all_rows = rows if rows is not None else torch.arange(n, device=x.device).expand(num, n)
            final = sum(loss_on(chunk) * chunk.shape[1] for chunk in all_rows.split(eval_bs, dim=1)) / r
        for k, net in enumerate(nets):
            for name, p in net.named_parameters():
                p.copy_(params[name][k])
            for name, b in net.named_buffers():
                b.copy_(buffers[name][k])
            net.train(was_training[k])
    return [float(v) for v in final]


def _fit_one_by_one(nets, x: Tensor, y: Tensor, loss_fn: LossFn, rows: Tensor | None, epochs: int, bs: int, r: int,
                    eval_bs: int, lr: float, weight_decay: float, generators, progress: bool, desc: str) -> list[float]:
    """:func:`fit_networks` without stacking: each network alone, the same permutations and steps."""
    final = []
    for k, net in enumerate(nets):
        own = rows[k] if rows is not None else None
        was_training = net.training
        net.train()
        optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
        g = generators[k]
        bar = progress_bar(range(epochs), desc=desc if len(nets) == 1 else f"{desc} {k + 1}/{len(nets)}", enabled=progress)
        for _ in bar:
            if bs == r:
                batches = [own if own is not None else torch.arange(r, device=x.device)]
            else:
                perm = torch.randperm(r, generator=g, device=g.device if g is not None else "cpu").to(x.device)
                batches = list((perm if own is None else own[perm]).split(bs))
            for idx in batches:
                optimizer.zero_grad(set_to_none=True)
                value = loss_fn(net(x[idx]).unsqueeze(0), y[k, idx].unsqueeze(0))
                value.sum().backward()
                optimizer.step()
            loss_value = float(value.detach().sum())
            if not math.isfinite(loss_value):
                raise RuntimeError(f"training loss became {loss_value}; lower lr (now {lr:g}) or standardise x and y")
            if progress:
                bar.set_postfix(loss=f"{loss_value:.4g}")
        net.eval()
        with torch.no_grad():
            # A mean loss over all rows is the row-weighted mean of chunk means.
            all_rows = own if own is not None else torch.arange(x.shape[0], device=x.device)
            total = sum(float(loss_fn(net(x[chunk]).unsqueeze(0), y[k, chunk].unsqueeze(0)).sum()) * len(chunk)
                        for chunk in all_rows.split(eval_bs))
        net.train(was_training)
        final.append(total / r)
    return final
