"""Tests for pyro_dlf_bench.datasets.uci: the loader on small written tables, and the shipped sets' documented shapes.

The shipped sets are read from the tests' data root (``$PYRO_DLF_DATA_DIR/uci``, else
``../shared/data/uci`` beside the repository; see ``tests/shared_data.py``); the tests of their
properties carry the ``data`` marker and skip, saying how to point at the data, when it is absent.
"""

import pathlib

import numpy as np
import pytest
import torch

import shared_data
from pyro_dlf.cli import main
from pyro_dlf_bench.datasets import UCI_DATASETS, Standardizer, UCIData, UCISplit, load_uci, train_test_split, write_uci_layout

SHAPES = {
    "bostonHousing": (506, 13),
    "concrete": (1030, 8),
    "energy": (768, 8),
    "wine-quality-red": (1599, 11),
    "yacht": (308, 6),
    "naval-propulsion-plant": (11934, 16),
    "protein-tertiary-structure": (45730, 9),
}


@pytest.fixture(scope="module")
def shipped():
    """``shipped(name)``: a shipped set from the tests' data root, loaded once in float64; skips when it is absent."""
    cache: dict[str, UCIData] = {}

    def get(name: str) -> UCIData:
        if name not in cache:
            cache[name] = load_uci(shared_data.require_uci_set(name), dtype=torch.float64)
        return cache[name]

    return get


def _write_set(folder: pathlib.Path, data: str, features: str = "0 2\n", target: str = "1\n") -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.txt").write_text(data)
    (folder / "index_features.txt").write_text(features)
    (folder / "index_target.txt").write_text(target)
    return folder


def _table(rows: int = 20, cols: int = 3) -> np.ndarray:
    # Column 0 is the row id, so split membership can be checked exactly.
    rng = np.random.default_rng(0)
    table = rng.normal(size=(rows, cols))
    table[:, 0] = np.arange(rows)
    return table


def _text(table: np.ndarray) -> str:
    return "".join(" ".join(f"{v:.17g}" for v in row) + "\n" for row in table)


# ------------------------------------------------------------------ loading


def test_shipped_names_are_the_documented_sets():
    assert set(UCI_DATASETS) == set(SHAPES)
    assert len(UCI_DATASETS) == 7


@pytest.mark.data
def test_shipped_names_match_the_shared_folders():
    for name in UCI_DATASETS:
        assert shared_data.require_uci_set(name).is_dir(), name


@pytest.mark.data
def test_every_shipped_set_loads_with_documented_shape(shipped):
    for name in UCI_DATASETS:
        data = shipped(name)
        n, d = SHAPES[name]
        assert data.name == name
        assert data.x.shape == (n, d), name
        assert data.y.shape == (n,), name
        assert len(data) == n
        assert data.x.dtype == data.y.dtype == torch.float64
        assert len(data.feature_columns) == d
        assert data.target_column not in data.feature_columns
        assert bool(torch.isfinite(data.x).all()) and bool(torch.isfinite(data.y).all())
    # Naval has 18 columns; the target is column 16 and column 17 is unused.
    assert shipped("naval-propulsion-plant").target_column == 16


@pytest.mark.data
def test_columns_follow_the_index_files(shipped):
    folder = shared_data.require_uci_set("yacht")
    raw = np.loadtxt(folder / "data.txt" if (folder / "data.txt").is_file() else folder / "data" / "data.txt")
    data = shipped("yacht")
    np.testing.assert_array_equal(data.x.numpy(), raw[:, list(data.feature_columns)])
    np.testing.assert_array_equal(data.y.numpy(), raw[:, data.target_column])


@pytest.mark.data
def test_default_dtype_is_float32():
    data = load_uci(shared_data.require_uci_set("yacht"))
    assert data.x.dtype == data.y.dtype == torch.float32
    assert data.x.shape == (308, 6)


@pytest.mark.data
def test_set_name_resolves_under_env_var(monkeypatch):
    uci = shared_data.require_uci_set("yacht").parent
    monkeypatch.setenv("PYRO_DLF_UCI_DIR", str(uci))
    data = load_uci("yacht")
    assert data.name == "yacht"
    assert data.x.shape == (308, 6)
    # One variable for every data set: the folder holding uci/.
    monkeypatch.delenv("PYRO_DLF_UCI_DIR")
    monkeypatch.setenv("PYRO_DLF_DATA_DIR", str(uci.parent))
    assert load_uci("yacht").x.shape == (308, 6)


def test_custom_folder_in_the_layout_loads(tmp_path):
    table = _table(20, 3)
    # Blank lines and one-index-per-line files are part of the layout.
    folder = _write_set(tmp_path / "my-set", _text(table) + "\n", features="0\n2\n", target="1\n")
    data = load_uci(folder, dtype=torch.float64)
    assert data.name == "my-set"
    assert data.feature_columns == (0, 2) and data.target_column == 1
    np.testing.assert_array_equal(data.x.numpy(), table[:, [0, 2]])
    np.testing.assert_array_equal(data.y.numpy(), table[:, 1])
    # A str path works as well as a Path.
    assert load_uci(str(folder)).x.shape == (20, 2)


def test_custom_set_name_resolves_under_env_var(tmp_path, monkeypatch):
    _write_set(tmp_path / "custom", _text(_table(12, 3)))
    monkeypatch.setenv("PYRO_DLF_UCI_DIR", str(tmp_path))
    assert load_uci("custom").x.shape == (12, 2)


def test_set_name_resolves_under_the_data_dir_when_the_uci_dir_is_not_set(tmp_path, monkeypatch):
    _write_set(tmp_path / "data" / "uci" / "custom", _text(_table(12, 3)))
    _write_set(tmp_path / "sets" / "custom", _text(_table(14, 3)))
    monkeypatch.delenv("PYRO_DLF_UCI_DIR", raising=False)
    monkeypatch.setenv("PYRO_DLF_DATA_DIR", str(tmp_path / "data"))
    assert load_uci("custom").x.shape == (12, 2)
    # PYRO_DLF_UCI_DIR, when set, is the one that names the set folders.
    monkeypatch.setenv("PYRO_DLF_UCI_DIR", str(tmp_path / "sets"))
    assert load_uci("custom").x.shape == (14, 2)


def test_data_dir_without_uci_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PYRO_DLF_UCI_DIR", raising=False)
    monkeypatch.setenv("PYRO_DLF_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"PYRO_DLF_DATA_DIR=.* holds no uci/ folder; point it at the folder holding uci/"):
        load_uci("yacht-that-is-not-here")
    (tmp_path / "uci" / "present").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no set named 'absent' under PYRO_DLF_DATA_DIR=.*available: present"):
        load_uci("absent")


# ------------------------------------------------------------------ layouts


def _regression_table(rows: int = 15, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(rows, d)) * 100.0, rng.normal(size=rows) / 3.0


def test_public_collection_layout_loads(tmp_path, monkeypatch):
    x, y = _regression_table()
    # The public collection keeps each set's files in <set>/data/, beside other files of its own.
    write_uci_layout(tmp_path / "uci" / "my-set" / "data", x, y)
    (tmp_path / "uci" / "my-set" / "data" / "n_splits.txt").write_text("20\n")
    data = load_uci(tmp_path / "uci" / "my-set", dtype=torch.float64)
    assert data.name == "my-set"
    np.testing.assert_array_equal(data.x.numpy(), x)
    np.testing.assert_array_equal(data.y.numpy(), y)
    monkeypatch.setenv("PYRO_DLF_UCI_DIR", str(tmp_path / "uci"))
    assert load_uci("my-set").x.shape == (15, 3)


def test_flat_layout_is_read_before_the_data_subfolder(tmp_path):
    x, y = _regression_table()
    folder = write_uci_layout(tmp_path / "both", x, y)
    write_uci_layout(folder / "data", x[:12], y[:12])
    assert load_uci(folder).x.shape == (15, 3)


def test_folder_in_neither_layout_names_the_path_and_both_layouts(tmp_path):
    folder = tmp_path / "empty-set"
    (folder / "data").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as caught:
        load_uci(folder)
    message = str(caught.value)
    assert f"path={str(folder)!r} holds no UCI set" in message
    assert "<set>/data.txt" in message and "<set>/data/data.txt" in message
    assert "\n" not in message


def test_missing_file_in_the_data_subfolder_is_named(tmp_path):
    folder = write_uci_layout(tmp_path / "set" / "data", *_regression_table())
    (folder / "index_target.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"set/data lacks index_target\.txt"):
        load_uci(tmp_path / "set")


@pytest.mark.parametrize("benchmark", ["uci", "svi"])
def test_bench_data_path_in_neither_layout_is_one_line(tmp_path, capsys, benchmark):
    (tmp_path / "empty-set").mkdir()
    argv = ["bench", benchmark, "--data-path", str(tmp_path / "empty-set"), "--output-dir", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pyro-dlf bench {benchmark}: error: --data-path " in err
    assert "<set>/data.txt" in err and "<set>/data/data.txt" in err and "Traceback" not in err


def test_bench_data_path_takes_the_public_collection_layout(tmp_path, monkeypatch):
    import pyro_dlf_bench.harness.uci as uci

    write_uci_layout(tmp_path / "my-set" / "data", *_regression_table())
    seen = []
    monkeypatch.setattr(uci, "_run_split", lambda config, data, seed: seen.append((data.name, data.x.shape)) or [])
    assert uci.run_uci_benchmark(uci.UCIBenchConfig(data_path=str(tmp_path / "my-set"), splits=1, progress=False))["rows"] == []
    assert seen == [("my-set", (15, 3))]


# ------------------------------------------------------------------ writing


def test_write_uci_layout_round_trips_exactly(tmp_path):
    x, y = _regression_table(20, 4)
    x[0, 0], y[1] = 1e-300, -123456789.123456789  # extremes survive the text
    folder = write_uci_layout(str(tmp_path / "new" / "nested" / "set"), x, y)
    assert isinstance(folder, pathlib.Path) and folder == tmp_path / "new" / "nested" / "set"
    assert (folder / "index_features.txt").read_text().split() == ["0", "1", "2", "3"]
    assert (folder / "index_target.txt").read_text().split() == ["4"]
    data = load_uci(folder, dtype=torch.float64)
    assert data.name == "set" and data.feature_columns == (0, 1, 2, 3) and data.target_column == 4
    np.testing.assert_array_equal(data.x.numpy(), x)
    np.testing.assert_array_equal(data.y.numpy(), y)
    # Tensors and integer arrays work too; writing again replaces the files.
    write_uci_layout(folder, torch.arange(24.0).reshape(12, 2), np.arange(12))
    again = load_uci(folder, dtype=torch.float64)
    assert again.x.shape == (12, 2) and again.y.tolist() == list(range(12))


@pytest.mark.parametrize(
    "folder, x, y, error, message",
    [
        (3, np.zeros((12, 2)), np.zeros(12), TypeError, "folder must be a folder path"),
        ("", np.zeros((12, 2)), np.zeros(12), ValueError, "folder is empty"),
        ("set", np.zeros(12), np.zeros(12), ValueError, r"x must have shape \(n, d\) with d >= 1, got \(12,\)"),
        ("set", np.zeros((12, 0)), np.zeros(12), ValueError, r"x must have shape \(n, d\) with d >= 1"),
        ("set", np.zeros((12, 2)), np.zeros((12, 1)), ValueError, r"y must have shape \(n,\), got \(12, 1\); flatten"),
        ("set", np.zeros((12, 2)), np.zeros(11), ValueError, "same number of rows, got 12 and 11"),
        ("set", np.zeros((9, 2)), np.zeros(9), ValueError, r"9 row\(s\); at least 10"),
        ("set", np.full((12, 2), np.nan), np.zeros(12), ValueError, r"x holds NaN or Inf \(first in row 0\)"),
        ("set", np.zeros((12, 2)), np.r_[np.zeros(11), np.inf], ValueError, r"y holds NaN or Inf \(first in row 11\)"),
        ("set", np.full((12, 2), "a"), np.zeros(12), TypeError, "x must hold real numbers"),
        ("set", np.zeros((12, 2)), np.zeros(12, dtype=complex), TypeError, "y must hold real numbers"),
    ],
)
def test_write_uci_layout_rejects_bad_inputs(tmp_path, monkeypatch, folder, x, y, error, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        write_uci_layout(folder, x, y)
    assert not (tmp_path / "set").exists()  # nothing written


def test_write_uci_layout_refuses_a_file_as_folder(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(NotADirectoryError, match="folder=.* is a file"):
        write_uci_layout(tmp_path / "taken", *_regression_table())


# ------------------------------------------------------------------ split protocol


def test_split_sizes_disjoint_and_covering(tmp_path):
    data = load_uci(_write_set(tmp_path / "ids", _text(_table(50, 3))), dtype=torch.float64)
    split = data.split(seed=3)
    assert isinstance(split, UCISplit) and split.seed == 3
    assert split.x_train.shape == (45, 2) and split.x_test.shape == (5, 2)
    assert split.y_train.shape == (45,) and split.y_test.shape == (5,)
    ids_train = split.x_standardizer.inverse(split.x_train)[:, 0].round().long().tolist()
    ids_test = split.x_standardizer.inverse(split.x_test)[:, 0].round().long().tolist()
    assert set(ids_train).isdisjoint(ids_test)
    assert sorted(ids_train + ids_test) == list(range(50))


@pytest.mark.data
def test_split_sizes_on_shipped_sets(shipped):
    for name in UCI_DATASETS:
        data, n = shipped(name), SHAPES[name][0]
        split = data.split(0)
        n_test = round(0.1 * n)
        assert split.x_test.shape[0] == split.y_test.shape[0] == n_test, name
        assert split.x_train.shape[0] == split.y_train.shape[0] == n - n_test, name


@pytest.mark.data
def test_split_is_deterministic_per_seed_and_differs_across_seeds(shipped):
    data = shipped("bostonHousing")
    a, b, c = data.split(0), data.split(0), data.split(1)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.y_test_original, c.y_test_original)
    assert not torch.equal(a.x_standardizer.loc, c.x_standardizer.loc)


@pytest.mark.data
@pytest.mark.parametrize("name", ["bostonHousing", "concrete", "energy", "yacht", "naval-propulsion-plant"])
def test_training_part_is_standardised(shipped, name):
    split = shipped(name).split(seed=7)
    raw_x_train = split.x_standardizer.inverse(split.x_train)
    constant = raw_x_train.std(0, correction=0) == 0  # naval has constant columns: only centred
    mean, std = split.x_train.mean(0), split.x_train.std(0, correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.where(constant, 0.0, 1.0).to(std), atol=1e-5, rtol=0)
    assert float(split.y_train.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(split.y_train.std(correction=0)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.data
def test_test_part_uses_training_statistics(shipped):
    data = shipped("concrete")
    split = data.split(seed=2)
    raw = train_test_split(data.x, data.y, test_fraction=0.1, seed=2)
    (x_train, y_train), (x_test, y_test) = raw["train"], raw["test"]
    y_std, x_std = Standardizer.fit(y_train), Standardizer.fit(x_train)
    torch.testing.assert_close(split.y_standardizer.loc, y_std.loc)
    torch.testing.assert_close(split.y_standardizer.scale, y_std.scale)
    torch.testing.assert_close(split.x_standardizer.loc, x_std.loc)
    torch.testing.assert_close(split.x_test, (x_test - x_std.loc) / x_std.scale)
    torch.testing.assert_close(split.y_standardizer.inverse(split.y_test), y_test)
    torch.testing.assert_close(split.y_test_original, y_test)
    torch.testing.assert_close(split.to_original_mean(split.y_test), y_test)
    # The test part is not itself standardised: its statistics differ from (0, 1).
    assert float(split.y_test.mean().abs()) > 1e-6


@pytest.mark.data
def test_to_original_variance_scales_by_scale_squared(shipped):
    split = shipped("energy").split(seed=0)
    v = torch.linspace(0.1, 2.0, split.y_test.shape[0], dtype=torch.float64)
    s = split.y_standardizer.scale
    torch.testing.assert_close(split.to_original_variance(v), v * s**2)
    torch.testing.assert_close(split.to_original_variance(v), split.y_standardizer.inverse_variance(v))
    # Batched predictions broadcast: (num_samples, n_test).
    assert split.to_original_mean(torch.zeros(4, split.y_test.shape[0], dtype=torch.float64)).shape == (4, split.y_test.shape[0])


def test_split_bad_arguments(tmp_path):
    data = load_uci(_write_set(tmp_path / "set", _text(_table(20, 3))))
    with pytest.raises(TypeError, match="seed"):
        data.split(seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        data.split(seed=-1)
    with pytest.raises(ValueError, match="test_fraction"):
        data.split(seed=0, test_fraction=1.0)


# ------------------------------------------------------------------ bad inputs


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_uci(tmp_path / "nope")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        (tmp_path / "afile").write_text("1\n")
        load_uci(tmp_path / "afile")


def test_set_name_without_env_var(monkeypatch):
    monkeypatch.delenv("PYRO_DLF_UCI_DIR", raising=False)
    monkeypatch.delenv("PYRO_DLF_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="neither PYRO_DLF_UCI_DIR nor PYRO_DLF_DATA_DIR is set"):
        load_uci("yacht-that-is-not-here")


def test_unknown_set_name_under_env_var(tmp_path, monkeypatch):
    _write_set(tmp_path / "present", _text(_table()))
    monkeypatch.setenv("PYRO_DLF_UCI_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no set named 'absent'.*available: present"):
        load_uci("absent")
    monkeypatch.setenv("PYRO_DLF_UCI_DIR", str(tmp_path / "missing-root"))
    with pytest.raises(FileNotFoundError, match="PYRO_DLF_UCI_DIR=.* is not a folder"):
        load_uci("present-elsewhere")


@pytest.mark.parametrize("missing", ["data.txt", "index_features.txt", "index_target.txt"])
def test_missing_file_is_named(tmp_path, missing):
    folder = _write_set(tmp_path / "set", _text(_table()))
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"lacks {missing}"):
        load_uci(folder)


def test_non_numeric_data_names_file_and_line(tmp_path):
    lines = _text(_table()).splitlines()
    lines[2] = "1.0 abc 3.0"
    folder = _write_set(tmp_path / "set", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"data\.txt: line 3, column 1: 'abc' is not a number"):
        load_uci(folder)


def test_non_numeric_line_number_counts_blank_lines(tmp_path):
    lines = _text(_table()).splitlines()
    lines.insert(1, "")
    lines[4] = "1.0 2.0 x"
    folder = _write_set(tmp_path / "set", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"data\.txt: line 5, column 2"):
        load_uci(folder)


def test_non_integer_index_names_file_and_line(tmp_path):
    folder = _write_set(tmp_path / "set", _text(_table()), features="0\ntwo\n")
    with pytest.raises(ValueError, match=r"index_features\.txt: line 2: 'two' is not an integer"):
        load_uci(folder)
    folder = _write_set(tmp_path / "set", _text(_table()), features="0 2\n", target="1.5\n")
    with pytest.raises(ValueError, match=r"index_target\.txt: line 1: '1\.5' is not an integer"):
        load_uci(folder)


def test_ragged_rows(tmp_path):
    lines = _text(_table()).splitlines()
    lines[6] = "1.0 2.0"
    folder = _write_set(tmp_path / "set", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"data\.txt: line 7 has 2 columns but line 1 has 3"):
        load_uci(folder)


def test_index_out_of_range(tmp_path):
    folder = _write_set(tmp_path / "set", _text(_table()), features="0 5\n")
    with pytest.raises(ValueError, match=r"index_features\.txt: column index 5 is out of range.*3 columns"):
        load_uci(folder)
    folder = _write_set(tmp_path / "set", _text(_table()), features="0 2\n", target="3\n")
    with pytest.raises(ValueError, match=r"index_target\.txt: column index 3 is out of range"):
        load_uci(folder)


def test_bad_index_lists(tmp_path):
    folder = _write_set(tmp_path / "set", _text(_table()), features="0 -1\n")
    with pytest.raises(ValueError, match=r"index_features\.txt: line 1: column index -1 is negative"):
        load_uci(folder)
    folder = _write_set(tmp_path / "set", _text(_table()), features="0\n0\n")
    with pytest.raises(ValueError, match=r"index_features\.txt: line 2: column 0 is listed twice"):
        load_uci(folder)
    folder = _write_set(tmp_path / "set", _text(_table()), features="\n")
    with pytest.raises(ValueError, match=r"index_features\.txt holds no column index"):
        load_uci(folder)
    folder = _write_set(tmp_path / "set", _text(_table()), features="0\n", target="1 2\n")
    with pytest.raises(ValueError, match=r"index_target\.txt must hold exactly one column index"):
        load_uci(folder)


def test_target_among_features(tmp_path):
    folder = _write_set(tmp_path / "set", _text(_table()), features="0 1 2\n", target="1\n")
    with pytest.raises(ValueError, match=r"index_target\.txt: the target column 1 is also listed in .*index_features\.txt"):
        load_uci(folder)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_in_used_columns(tmp_path, bad):
    lines = _text(_table()).splitlines()
    lines[4] = f"4 0.5 {bad}"
    folder = _write_set(tmp_path / "set", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"data\.txt: 1 NaN or Inf value\(s\) in the used columns, the first on line 5 \(column 2\)"):
        load_uci(folder)


def test_non_finite_in_unused_column_is_ignored(tmp_path):
    table = _table(20, 4)
    table[3, 3] = np.nan
    folder = _write_set(tmp_path / "set", _text(table), features="0 2\n", target="1\n")
    assert load_uci(folder).x.shape == (20, 2)


def test_fewer_than_ten_rows(tmp_path):
    folder = _write_set(tmp_path / "set", _text(_table(9, 3)))
    with pytest.raises(ValueError, match=r"data\.txt holds 9 row\(s\); at least 10"):
        load_uci(folder)
    folder = _write_set(tmp_path / "empty", "")
    with pytest.raises(ValueError, match=r"data\.txt holds 0 row\(s\)"):
        load_uci(folder)


def test_overflow_in_narrow_dtype(tmp_path):
    table = _table()
    table[0, 2] = 1e300
    folder = _write_set(tmp_path / "set", _text(table))
    with pytest.raises(ValueError, match="overflow.*dtype=torch.float64"):
        load_uci(folder, dtype=torch.float32)
    assert load_uci(folder, dtype=torch.float64).x.shape == (20, 2)


def test_bad_argument_types(tmp_path):
    with pytest.raises(TypeError, match="path must be"):
        load_uci(42)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        load_uci(tmp_path, dtype=torch.int64)
    with pytest.raises(ValueError, match="path is empty"):
        load_uci("")
