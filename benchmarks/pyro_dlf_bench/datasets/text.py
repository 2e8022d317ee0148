r"""The Rotten Tomatoes text set of the language-model experiment: reviews (fresh / rotten) and plot synopses.

The corpus (Pang & Lee's review snippets) is one bzip2-compressed CSV with the
columns ``category`` (``fresh``, ``rotten`` or ``plot``), ``text`` and
``movie_name``. :func:`load_rotten_tomatoes` reads it offline from a path, or
from the file named by ``$PYRO_DLF_ROTTEN_TOMATOES``, or from ``text/`` under
``$PYRO_DLF_DATA_DIR``; nothing is downloaded.

* **Reviews** are the classification data: label 1 = fresh, 0 = rotten. Rows
  without text are dropped, and exact duplicate texts are kept once (a
  duplicate on both sides of a split would be a test review the teachers were
  trained on).
* A fixed **stratified split** (seeded; per class, the same fractions):
  ``test_size`` reviews for testing (default 2,500), ``design_size`` for the
  students' design set (default 3,000: the teachers never see them), the rest
  (about 7,250) to train the teachers. With the defaults on the full corpus:
  12,752 distinct reviews, 7,252 / 3,000 / 2,500.
* **Out-of-distribution** inputs: the ``plot`` rows (plot synopses of the
  films, 1,083 with text): the same films and vocabulary, but descriptions
  rather than opinions -- and much longer (median 87 words against 18), so an
  encoder truncating at 64 tokens reads their first sentences only.
"""

from __future__ import annotations

import bz2
import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["TextData", "load_rotten_tomatoes", "ROTTEN_TOMATOES_ENV", "ROTTEN_TOMATOES_FILE", "TEXT_CLASSES"]

ROTTEN_TOMATOES_ENV = "PYRO_DLF_ROTTEN_TOMATOES"
ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
#: Class names by label.
TEXT_CLASSES = ("rotten", "fresh")
_COLUMNS = ("category", "text")


@dataclass
class TextData:
    """Reviews split into teacher-training, design and test parts, plus out-of-distribution texts.

    :ivar name: the set's name.
    :ivar train_texts: reviews the teachers train on; ``train_labels`` their labels (int64).
    :ivar design_texts: the students' design (transfer) set; ``design_labels`` (unused by distillation).
    :ivar test_texts: held-out reviews; ``test_labels``.
    :ivar ood_texts: plot synopses (no labels).
    :ivar classes: class names by label, ``("rotten", "fresh")``.
    """

    name: str
    train_texts: list
    train_labels: torch.Tensor
    design_texts: list
    design_labels: torch.Tensor
    test_texts: list
    test_labels: torch.Tensor
    ood_texts: list
    classes: tuple = TEXT_CLASSES

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict:
        """Number of texts per part."""
        return {"train": len(self.train_texts), "design": len(self.design_texts), "test": len(self.test_texts),
                "ood": len(self.ood_texts)}


def _resolve(path: Optional[Union[str, os.PathLike]]) -> Path:
    if path is None:
        env = os.environ.get(ROTTEN_TOMATOES_ENV)
        if env:
            path = env
        elif os.environ.get("PYRO_DLF_DATA_DIR"):
            path = Path(os.environ["PYRO_DLF_DATA_DIR"]) / "text"
        else:
            raise FileNotFoundError(f"no path given: pass the {ROTTEN_TOMATOES_FILE} file (or its folder), or set "
                                    f"{ROTTEN_TOMATOES_ENV}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file or folder path, got {type(path).__name__}")
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / ROTTEN_TOMATOES_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist: pass the {ROTTEN_TOMATOES_FILE} file or the folder holding it")
    return p


def _read_rows(p: Path) -> list[dict]:
    opener = bz2.open if p.suffix == ".bz2" else open
    try:
        with opener(p, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{p} lacks the column(s) {missing}; expected a CSV with columns category (fresh/rotten/plot) and text")
            return list(reader)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{p} could not be read as a (bzip2-compressed) UTF-8 CSV: {error}") from None


def _check_size(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"{name} must be an int >= 2 (at least one review of each class), got {value!r}")
    return value


def load_rotten_tomatoes(path: Optional[Union[str, os.PathLike]] = None, *, design_size: int = 3000, test_size: int = 2500,
                         seed: int = 0) -> TextData:
    """Read the Rotten Tomatoes corpus and split its reviews (see the module docstring).

    :param path: the ``.csv.bz2`` file (or a plain ``.csv``), or the folder holding it.
    :param design_size: reviews in the students' design set.
    :param test_size: reviews in the test set.
    :param seed: seed of the stratified split.
    :raises FileNotFoundError: when no file is found.
    :raises ValueError: on a malformed file or sizes that leave no teacher-training reviews.
    """
    design_size, test_size = _check_size(design_size, "design_size"), _check_size(test_size, "test_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    p = _resolve(path)
    reviews: dict[str, int] = {}
    plots: list[str] = []
    for row in _read_rows(p):
        text, category = (row.get("text") or "").strip(), (row.get("category") or "").strip()
        if not text:
            continue
        if category == "plot":
            plots.append(text)
        elif category in TEXT_CLASSES:
            reviews.setdefault(text, TEXT_CLASSES.index(category))  # first occurrence of a duplicate wins
        else:
            raise ValueError(f"{p}: unknown category {category!r}; expected fresh, rotten or plot")
    texts = list(reviews)
    labels = torch.tensor([reviews[t] for t in texts], dtype=torch.long)
    total = len(texts)
    if design_size + test_size >= total - 1:
        raise ValueError(f"design_size + test_size = {design_size + test_size} leaves no reviews to train the teachers "
                         f"({total} distinct reviews); lower them")
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[int]] = {"design": [], "test": []}
    train: list[int] = []
    for label in range(len(TEXT_CLASSES)):
        rows = (labels == label).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=generator)].tolist()
        # Per class, the same fractions (rounded; the last class takes the remainder of each part).
        share = len(rows) / total
        num_design = round(design_size * share) if label < len(TEXT_CLASSES) - 1 else design_size - len(parts["design"])
        num_test = round(test_size * share) if label < len(TEXT_CLASSES) - 1 else test_size - len(parts["test"])
        parts["design"] += rows[:num_design]
        parts["test"] += rows[num_design:num_design + num_test]
        train += rows[num_design + num_test:]

    def take(rows: list[int]) -> tuple[list, torch.Tensor]:
        rows = sorted(rows)
        return [texts[i] for i in rows], labels[rows]

    (train_texts, train_labels), (design_texts, design_labels), (test_texts, test_labels) = (
        take(train), take(parts["design"]), take(parts["test"]))
    return TextData("rotten-tomatoes", train_texts, train_labels, design_texts, design_labels, test_texts, test_labels, plots)
