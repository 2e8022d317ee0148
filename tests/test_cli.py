"""The pyro-dlf command line: the demo, distill and predict from files, flags, errors, warnings and progress."""

import json
import os
import re
import warnings

import numpy as np
import pytest
import torch
from synthetic import synthetic_teachers

from pyro_dlf.cli import build_parser, flag_names, main, translate


def test_demo_smoke_writes_table_png_and_json(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    monkeypatch.setenv("TQDM_DISABLE", "1")  # no bars; the stage lines stay
    assert main(["demo", "--smoke", "--output-dir", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert "\r" not in err and "it/s" not in err, err
    stages = err.splitlines()
    assert [line.split(" ")[0] for line in stages] == ["Training", "Distilling", "Scoring"], err
    assert all(line.endswith(" ...") for line in stages)
    for name in ("teacher ensemble", "one teacher", "DLF student", "RMSE", "CRPS"):
        assert name in printed
    assert os.path.getsize(out / "predictive_intervals.png") > 10_000
    result = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    for row in rows.values():
        assert all(v == v and abs(v) != float("inf") for k, v in row.items() if k != "method")
        assert 0.0 <= row["coverage95"] <= 1.0
    # The student is smaller than the ensemble it distils; its loadings have their own body.
    assert rows["DLF student"]["parameters"] < rows["teacher ensemble"]["parameters"]
    assert result["loading_hidden"] == [8] and "loading body (8,)" in printed
    assert result["num_factors"] == 2 and "(q = 2, body" in printed


def _files(tmp_path, classification=False):
    truth, x, f = synthetic_teachers(6, num_points=40, num_outputs=3 if classification else None, num_factors=2)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "f.npy", f.numpy())
    np.savetxt(tmp_path / "x.csv", x.numpy(), delimiter=",")
    np.save(tmp_path / "s2.npy", np.linspace(0.01, 0.02, 6))
    np.save(tmp_path / "held.npy", (np.random.default_rng(0).random((6, 40)) < 0.5).astype(np.int8))
    return x, f


class _Ensemble(torch.nn.Module):
    """Four tanh networks on 2-D inputs in one module: (b, 2) -> (4, b), or logits (4, b, c)."""

    def __init__(self, num_classes: int = 0, num_teachers: int = 4, width: int = 8):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(num_teachers, 2, width, generator=generator))
        self.b1 = torch.nn.Parameter(torch.randn(num_teachers, 1, width, generator=generator))
        self.w2 = torch.nn.Parameter(0.5 * torch.randn(num_teachers, width, max(num_classes, 1), generator=generator))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.tanh(x @ self.w1 + self.b1) @ self.w2
        return out if self.num_classes > 0 else out[..., 0]


class _Transposed(torch.nn.Module):
    """One row per input instead of one per teacher: (b, 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.ones(2, 4)


class _Pair(torch.nn.Module):
    """Two tensors instead of one."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.T, x.T


class _OneTeacher(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].T


class _SmallBatches(torch.nn.Module):
    """Four teachers that fail on batches of more than 8 rows (passes the 8-row probe, fails in the fit)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 8:
            raise RuntimeError("at most 8 rows per batch")
        return x.sum(1).expand(4, x.shape[0])


class _NotANumber(torch.nn.Module):
    """Four teachers whose values are all NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((4, x.shape[0]), float("nan"))


def _module_files(tmp_path):
    """40 data rows in 2-D, the TorchScript ensembles of the tests, their noise variances; returns (x, ensemble)."""
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(40, 2)), dtype=torch.float32)
    np.save(tmp_path / "rows.npy", x.numpy())
    np.save(tmp_path / "s2_4.npy", np.linspace(0.01, 0.02, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is the format --teacher-module reads
        ensemble = torch.jit.script(_Ensemble())
        torch.jit.save(ensemble, str(tmp_path / "ensemble.pt"))
        torch.jit.save(torch.jit.script(_Ensemble(num_classes=3)), str(tmp_path / "logits.pt"))
        for name, module in (("transposed", _Transposed()), ("pair", _Pair()), ("one", _OneTeacher()), ("nan", _NotANumber()),
                             ("small_batches", _SmallBatches())):
            torch.jit.save(torch.jit.script(module), str(tmp_path / f"{name}.pt"))
    torch.save(_Ensemble(), tmp_path / "pickled.pt")  # a module, but not TorchScript
    return x, ensemble


def _module_distill(tmp_path, *extra, out="m.pt"):
    return ["distill", "--x", str(tmp_path / "rows.npy"), "--teacher-module", str(tmp_path / "ensemble.pt"),
            "--noise-variances", str(tmp_path / "s2_4.npy"), "--out", str(tmp_path / out), *extra]


def test_distill_and_predict_from_files(tmp_path, capsys):
    x, f = _files(tmp_path)
    out = tmp_path / "models" / "student.pt"
    assert main(["distill", "--x", str(tmp_path / "x.npy"), "--teachers", str(tmp_path / "f.npy"), "--noise-variances",
                 str(tmp_path / "s2.npy"), "--num-factors", "2", "--hidden", "16", "--iterations", "5", "--mmd-steps", "20",
                 "--out", str(out), "--no-progress"]) == 0
    printed, err = capsys.readouterr()
    assert "Distilled 6 teachers at 40 design points (regression)" in printed
    assert err == ""  # --no-progress: no bars, no stage lines
    assert out.is_file() and os.path.getsize(tmp_path / "models" / "student_fit.png") > 5_000
    assert main(["predict", "--student", str(out), "--x", str(tmp_path / "x.csv"), "--out", str(tmp_path / "pred.npz"),
                 "--num-samples", "50", "--samples"]) == 0
    pred = np.load(tmp_path / "pred.npz")
    assert set(pred.files) == {"mean", "epistemic_variance", "aleatoric_variance", "total_variance", "function_samples",
                               "noise_variance_samples"}
    assert pred["function_samples"].shape == (50, 40)
    from pyro_dlf import Student

    student = Student.load(out)
    np.testing.assert_allclose(pred["mean"], student.predict(x, 1).mean.numpy(), rtol=1e-6)
    assert main(["predict", "--student", str(out), "--x", str(tmp_path / "x.npy"), "--out", str(tmp_path / "pred.csv")]) == 0
    header = (tmp_path / "pred.csv").read_text().splitlines()[0]
    assert header == "mean,epistemic_variance,aleatoric_variance,total_variance"
    # A held-out mask: the loadings are scaled to the teachers' spread on their held-out points.
    calibrated = tmp_path / "calibrated.pt"
    assert main(["distill", "--x", str(tmp_path / "x.npy"), "--teachers", str(tmp_path / "f.npy"), "--noise-variances",
                 str(tmp_path / "s2.npy"), "--num-factors", "2", "--hidden", "16", "--iterations", "5", "--mmd-steps", "20",
                 "--held-out", str(tmp_path / "held.npy"), "--out", str(calibrated), "--no-progress"]) == 0
    assert "loadings scaled to the teachers' held-out spread" in capsys.readouterr().out
    from pyro_dlf.calibration import out_of_sample_spread

    held = torch.as_tensor(np.load(tmp_path / "held.npy").astype(bool))
    spread, weight = out_of_sample_spread(f, held)
    variance = Student.load(calibrated).predict(x, 1).epistemic_variance.double()
    assert float((weight * variance).sum() / weight.sum()) == pytest.approx(spread, rel=1e-5)
    # The factor-dependent noise law, forced on: fitted, saved and said.
    law = tmp_path / "law.pt"
    assert main(["distill", "--x", str(tmp_path / "x.npy"), "--teachers", str(tmp_path / "f.npy"), "--noise-variances",
                 str(tmp_path / "s2.npy"), "--num-factors", "2", "--hidden", "16", "--iterations", "5", "--mmd-steps", "20",
                 "--noise-given-factors", "yes", "--out", str(law), "--no-progress"]) == 0
    assert "the teachers' noise follows their factors" in capsys.readouterr().out
    assert Student.load(law).noise_factor_exponent != 0.0
    # The training length chosen with the body on held-out design points: said.
    assert main(["distill", "--x", str(tmp_path / "x.npy"), "--teachers", str(tmp_path / "f.npy"), "--noise-variances",
                 str(tmp_path / "s2.npy"), "--num-factors", "2", "--hidden", "16", "--iterations", "5", "--mmd-steps", "20",
                 "--training-length", "auto", "--out", str(tmp_path / "short.pt"), "--no-progress"]) == 0
    assert "(chosen from 3 by held-out scores; training length " in capsys.readouterr().out
    # A separate loading body: fitted, saved and said.
    two = tmp_path / "two.pt"
    assert main(["distill", "--x", str(tmp_path / "x.npy"), "--teachers", str(tmp_path / "f.npy"), "--noise-variances",
                 str(tmp_path / "s2.npy"), "--num-factors", "2", "--hidden", "16", "--loading-hidden", "4", "--iterations", "5",
                 "--mmd-steps", "20", "--out", str(two), "--no-progress"]) == 0
    assert "loadings from a body (4,)" in capsys.readouterr().out
    assert Student.load(two).dlf.loading_hidden == (4,)


def test_classification_from_files_to_csv(tmp_path):
    x, f = _files(tmp_path, classification=True)
    out = tmp_path / "student.pt"
    assert main(["distill", "--x", str(tmp_path / "x.npy"), "--teachers", str(tmp_path / "f.npy"), "--num-factors", "2",
                 "--covariance", "full", "--hidden", "8", "--iterations", "3", "--mmd-steps", "10", "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["predict", "--student", str(out), "--x", str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.csv"),
                 "--num-samples", "20"]) == 0
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert header == ["probs_0", "probs_1", "probs_2", "total_entropy", "expected_entropy", "mutual_information"]


def _name_max(folder) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return -1


def _bad_cases(tmp_path):
    x, s2, f = str(tmp_path / "x.npy"), str(tmp_path / "s2.npy"), str(tmp_path / "f.npy")
    distill = ["distill", "--x", x, "--teachers", f, "--noise-variances", s2, "--num-factors", "2", "--iterations", "2",
               "--mmd-steps", "2", "--no-progress"]
    (tmp_path / "words.csv").write_text("a,b\nc,d\n")
    np.save(tmp_path / "held_short.npy", np.ones((6, 39), dtype=bool))
    (tmp_path / "data.json").write_text("{}")
    blocked = tmp_path / "x.npy"  # a file where a folder would have to be: cannot be written into, even by root
    return [
        (distill + ["--out", str(tmp_path / "s.pt"), "--x", str(tmp_path / "missing.npy")], "--x: no file at"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--x", str(tmp_path / "data.json")], "--x: '" ),
        (distill + ["--out", str(tmp_path / "s.pt"), "--x", str(tmp_path / "words.csv")], "holds text that is not a number"),
        (distill + ["--out", str(blocked / "s.pt")], "is a file, not a folder"),
        (distill + ["--out", str(tmp_path)], "is a folder"),
        # 300 bytes: longer than any common file system's name limit (255); only refused where the system says so.
        *([(distill + ["--out", str(tmp_path / ("a" * 300) / "s.pt")], "longer than the 255 this file system allows")]
          if _name_max(tmp_path) == 255 else []),
        (distill + ["--out", str(tmp_path / "s.pt"), "--hidden", "0"], "--hidden: widths must be positive"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--loading-hidden", "0"], "argument --loading-hidden: must be at least 1"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--num-factors", "0"], "argument --num-factors: must be at least 1"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--teachers", s2], "--teachers must have shape"),
        (["distill", "--x", x, "--teachers", f, "--num-factors", "2", "--out", str(tmp_path / "s.pt"), "--no-progress"],
         "--noise-variances: regression teachers need each teacher's noise variance"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--held-out", str(tmp_path / "held_short.npy")], "--held-out must have shape (6, 40)"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--held-out", f], "--held-out: the mask must hold only 0 and 1"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--noise-given-factors", "maybe"], "argument --noise-given-factors: invalid choice"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--training-length", "2"], "argument --training-length: must be a fraction in (0, 1]"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--training-length", "long"], "argument --training-length: expected a number"),
        (["predict", "--student", str(tmp_path / "none.pt"), "--x", x, "--out", str(tmp_path / "p.npz")], "--student: no file at"),
        (["predict", "--student", s2, "--x", x, "--out", str(tmp_path / "p.npz")], "not a readable pyro_dlf student file"),
        (["predict", "--student", s2, "--x", x, "--out", str(tmp_path / "p.csv"), "--samples"], "--samples: draws need an .npz"),
        (["predict", "--student", s2, "--x", x, "--out", str(tmp_path / "p.txt")], "must end in .npz or .csv"),
        (["bench", "uci", "--data-path", str(tmp_path), "--teacher-epochs", "0"], "argument --teacher-epochs: must be at least 1"),
        (["bench", "uci", "--data-path", str(tmp_path), "--output-dir", str(blocked / "out")], "--output-dir: " + repr(str(blocked)) + " is a file, not a folder"),
        (["bench", "images", "--dataset", "mnist", "--output-dir", str(tmp_path / "o")], "--data-dir: give --data-dir"),
        (["bench", "report", str(tmp_path / "missing.json"), "--output-dir", str(tmp_path / "o")], "inputs: cannot read"),
        (["demo", "--seed", "-1"], "argument --seed: must be at least 0"),
    ]


def test_user_mistakes_end_in_one_line_and_status_2(tmp_path, capsys):
    _files(tmp_path)
    for argv, expected in _bad_cases(tmp_path):
        code = _status(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert "\n" not in err and "Traceback" not in err and expected in err, (argv, err)


def _status(argv):
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own errors exit from inside main
        return stop.code


def test_version_and_every_flag_has_help(capsys):
    from pyro_dlf import __version__
    from pyro_dlf.cli import build_parser

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"pyro-dlf {__version__}"

    def walk(parser):
        for action in parser._actions:
            if action.dest == "help":
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for sub in action.choices.values():
                    yield from walk(sub)
            elif action.dest != "command":
                yield parser.prog, action

    missing = [f"{prog} {action.option_strings or action.dest}" for prog, action in walk(build_parser()) if not action.help]
    assert missing == []


# --- flags, defaults, errors, warnings and progress of `distill` and `predict` --------------------------------

_TINY = ["--hidden", "8", "--iterations", "2", "--mmd-steps", "2"]


def _distill(tmp_path, *extra, out="s.pt"):
    return ["distill", "--x", str(tmp_path / "x.npy"), "--teachers", str(tmp_path / "f.npy"), "--noise-variances",
            str(tmp_path / "s2.npy"), "--out", str(tmp_path / out), *extra]


class _Stop(ValueError):
    """Raised by a recording stand-in for the library, after the arguments were recorded."""


def _record_distill(monkeypatch):
    """Replace pyro_dlf.distill by a stand-in that records its arguments and stops (no fit)."""
    import pyro_dlf.api

    calls = []

    def record(x_design, teacher_outputs, **kwargs):
        calls.append(dict(kwargs, x_design=x_design, teacher_outputs=teacher_outputs))
        raise _Stop("recorded")

    monkeypatch.setattr(pyro_dlf.api, "distill", record)
    return calls


def test_num_factors_defaults_to_auto_and_reaches_the_library(tmp_path, capsys, monkeypatch):
    _files(tmp_path)
    args = build_parser().parse_args(["distill", "--x", "x.npy", "--teachers", "f.npy", "--out", "s.pt"])
    assert args.num_factors == "auto"
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    assert "(default: auto)" in capsys.readouterr().out
    calls = _record_distill(monkeypatch)
    for extra, expected in (([], "auto"), (["--num-factors", "3"], 3), (["--num-factors", "auto"], "auto")):
        assert main(_distill(tmp_path, "--no-progress", *extra)) == 2
        assert capsys.readouterr().err.strip() == "pyro-dlf distill: error: recorded"
        assert calls[-1]["num_factors"] == expected
    # Every argument the command line hands the library has a flag in the translation table.
    table = flag_names("distill")
    assert set(calls[-1]) - {"progress"} <= set(table), set(calls[-1]) - set(table)
    assert calls[-1]["device"] == torch.device("cpu") and calls[-1]["progress"] is False


def test_teacher_module_design_and_distance_feature_reach_the_library(tmp_path, capsys, monkeypatch):
    x, ensemble = _module_files(tmp_path)
    args = build_parser().parse_args(["distill", "--x", "x.npy", "--teacher-module", "e.pt", "--out", "s.pt"])
    assert (args.teachers, args.design, args.distance_feature) == (None, "auto", "auto")
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    required = capsys.readouterr().out.split("required arguments:")[1].split("required for regression teachers:")[0]
    assert "--teachers FILE" in required and "--teacher-module FILE" in required
    calls = _record_distill(monkeypatch)
    for extra, design, feature in (([], "auto", "auto"), (["--design", "between", "--distance-feature", "no"], "between", False),
                                   (["--design", "given", "--distance-feature", "yes"], "given", True)):
        assert main(_module_distill(tmp_path, "--no-progress", *extra)) == 2
        assert capsys.readouterr().err.strip() == "pyro-dlf distill: error: recorded"
        assert (calls[-1]["design"], calls[-1]["distance_feature"]) == (design, feature)
    # The loaded module is the one ensemble callable, on the data rows as float32; the values are its own.
    teachers = calls[-1]["teacher_outputs"]
    assert isinstance(teachers, torch.jit.ScriptModule) and not teachers.training
    assert torch.equal(calls[-1]["x_design"], x)
    torch.testing.assert_close(teachers(x), ensemble(x).detach())
    assert calls[-1]["teacher_noise_variances"].shape == (4,)
    # Logits (n, b, c) from the module: classification, no noise variances needed.
    assert main(["distill", "--x", str(tmp_path / "rows.npy"), "--teacher-module", str(tmp_path / "logits.pt"), "--design",
                 "beyond", "--out", str(tmp_path / "c.pt"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == "pyro-dlf distill: error: recorded"
    assert calls[-1]["teacher_noise_variances"] is None and calls[-1]["design"] == "beyond"
    # --teachers values: auto reaches the library (where it means given).
    _files(tmp_path)
    assert main(_distill(tmp_path, "--no-progress")) == 2
    capsys.readouterr()
    assert (calls[-1]["design"], calls[-1]["distance_feature"]) == ("auto", "auto")
    assert isinstance(calls[-1]["teacher_outputs"], torch.Tensor)


_TINY_DESIGN = ["--iterations", "3", "--mmd-steps", "5", "--hidden", "8", "--num-factors", "2", "--no-progress"]


def test_teacher_module_distilled_on_the_design_it_names(tmp_path, capsys):
    from pyro_dlf import Student

    x, _ = _module_files(tmp_path)
    # Asked for: the rows plus one Gaussian perturbation each, with the distance feature (auto: on off the rows).
    assert main(_module_distill(tmp_path, "--design", "around", *_TINY_DESIGN, out="around.pt")) == 0
    printed = capsys.readouterr().out
    assert "Distilled 4 teachers at 80 design points (regression)" in printed
    assert ", design around (asked for; 80 design points from 40 rows; distance feature on)," in printed
    student = Student.load(tmp_path / "around.pt")
    assert student.dlf.distance_anchors is not None
    assert np.isfinite(student.predict(x, 5).mean.numpy()).all()
    # Chosen: whichever design wins, the line names it with its points and the distance feature that goes with it.
    assert main(_module_distill(tmp_path, "--design", "auto", *_TINY_DESIGN, out="auto.pt")) == 0
    printed = capsys.readouterr().out
    said = re.search(r", design (given|around|beyond)(, reach (?:0\.5|1))? \(chosen by the teachers' held-out values"
                     r"(?:; (\d+) design points from 40 rows)?; distance feature (on|off)\)", printed)
    assert said, printed
    design, reach, points, feature = said.groups()
    assert (reach is not None) == (design == "beyond")
    assert int(points or 40) == 40 * {"given": 1, "around": 2, "beyond": 3}[design]
    assert feature == ("off" if design == "given" else "on")
    assert f"Distilled 4 teachers at {int(points or 40)} design points" in printed
    assert (Student.load(tmp_path / "auto.pt").dlf.distance_anchors is not None) == (feature == "on")
    # Teacher values: the given rows, and the line says why.
    _files(tmp_path)
    assert main(_distill(tmp_path, *_TINY_DESIGN)) == 0
    assert (", design given (the teachers are given as values at the --x rows; distance feature off),"
            in capsys.readouterr().out)


def test_num_factors_auto_fit_reports_the_chosen_q(tmp_path, capsys):
    _files(tmp_path)
    assert main(_distill(tmp_path, *_TINY, "--no-progress")) == 0
    printed = capsys.readouterr().out
    chosen = re.search(r"q = (\d+) \(--num-factors auto: chosen from the teachers' values, (\d+) % of their spread in "
                       r"(\d+) direction\(s\), 90 % asked\)", printed)
    assert chosen, printed
    from pyro_dlf import Student

    q = Student.load(tmp_path / "s.pt").dlf.num_factors
    assert int(chosen.group(1)) == int(chosen.group(3)) == q >= 1
    assert 0 < int(chosen.group(2)) <= 100


def test_noise_variances_shown_as_required_for_regression(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = capsys.readouterr().out
    required = text.split("required arguments:")[1].split("required for regression teachers:")[0]
    assert all(flag in required for flag in ("--x FILE", "--teachers FILE", "--out FILE"))
    regression = text.split("required for regression teachers:")[1].split("options:")[0]
    assert "--noise-variances FILE" in regression
    # Classification teachers need none; regression teachers without it: one line naming the flag, before any fit.
    _files(tmp_path)
    code = _status(["distill", "--x", str(tmp_path / "x.npy"), "--teachers", str(tmp_path / "f.npy"), "--out",
                    str(tmp_path / "s.pt"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("pyro-dlf distill: error: --noise-variances: regression teachers need") and "\n" not in err


def _error_cases(tmp_path):
    """Bad invocations (without --no-progress) and a piece of each one-line error."""
    x, f, s2 = (str(tmp_path / name) for name in ("x.npy", "f.npy", "s2.npy"))
    _, _, logits = synthetic_teachers(6, num_points=40, num_outputs=3, num_factors=2)
    np.save(tmp_path / "logits.npy", logits.numpy())
    np.save(tmp_path / "held_short.npy", np.ones((6, 39), dtype=bool))
    np.save(tmp_path / "mask.npy", np.ones((6, 40), dtype=bool))
    bad_x = np.load(x)
    bad_x[3, 0] = np.nan
    np.save(tmp_path / "x_nan.npy", bad_x)
    np.save(tmp_path / "x_scalar.npy", np.float32(1.0))
    np.save(tmp_path / "x_3d.npy", np.ones((40, 2, 2), dtype=np.float32))
    (tmp_path / "x_header.csv").write_text("a,b\n1,2\n")
    (tmp_path / "x_header.npy").write_text("a,b\n1,2\n")  # text under a .npy name
    student = tmp_path / "student.pt"
    from pyro_dlf import distill

    distill(torch.as_tensor(np.load(x)), torch.as_tensor(np.load(f)), num_factors=2, teacher_noise_variances=torch.as_tensor(np.load(s2)),
            hidden=(4,), num_iterations=1, mmd_steps=0, progress=False).save(student)
    unavailable = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    classify = ["distill", "--x", x, "--teachers", str(tmp_path / "logits.npy"), "--num-factors", "2", "--out", str(tmp_path / "c.pt")]
    predict = ["predict", "--student", str(student), "--out", str(tmp_path / "p.npz")]

    def bad(*extra):  # a valid q, so that each case fails on its own mistake (a later --num-factors wins)
        return _distill(tmp_path, "--num-factors", "2", *extra)

    _module_files(tmp_path)
    rows, s2_4 = str(tmp_path / "rows.npy"), str(tmp_path / "s2_4.npy")

    def module(name, *extra):
        return ["distill", "--x", rows, "--teacher-module", str(tmp_path / name), "--noise-variances", s2_4, "--num-factors", "2",
                "--out", str(tmp_path / "m.pt"), *extra]

    return [
        (["distill", "--x", x, "--teachers", f, "--out", str(tmp_path / "s.pt")], "--noise-variances: regression teachers need"),
        # The teachers: values or the ensemble, exactly one of the two; the module must be TorchScript of the right shape.
        (bad("--teacher-module", str(tmp_path / "ensemble.pt")), "argument --teacher-module: not allowed with argument --teachers"),
        (["distill", "--x", x, "--out", str(tmp_path / "s.pt")], "one of the arguments --teachers --teacher-module is required"),
        (module("pickled.pt"), "--teacher-module: cannot load"),
        (module("rows.npy"), "--teacher-module: cannot load"),
        (module("missing.pt"), "--teacher-module: no file at"),
        (module("transposed.pt"), "--teacher-module: the module returns shape (8, 4) for 8 rows of --x; it must return"),
        (module("pair.pt"), "--teacher-module: the module returns a tuple"),
        (module("ensemble.pt", "--x", x), "--teacher-module: the module fails on the first 8 rows of --x, shape (8, 1)"),
        (module("one.pt"), "--teacher-module: the module returns the values of 1 teacher(s)"),
        (module("nan.pt", "--design", "given"), "--teacher-module contains 160 non-finite value(s)"),  # the library's, translated
        (module("ensemble.pt", "--out", str(tmp_path / "ensemble.pt")), "is the --teacher-module file"),
        (module("small_batches.pt", "--design", "given", "--hidden", "4"), "--teacher-module: the module fails on --x rows 0..39 "
         "(builtins.RuntimeError: at most 8 rows per batch)"),
        # A design off the rows needs the ensemble itself, and rows without per-value masks.
        (bad("--design", "beyond"), "--design beyond: --teachers gives the teachers' values at the --x rows only"),
        (bad("--stream", "--design", "around", "--hidden", "8"), "--design around: a streamed fit reads"),
        (module("ensemble.pt", "--stream", "--hidden", "8"), "--teacher-module: --stream reads the teachers' values"),
        (bad("--stream", "--hidden", "8", "--distance-feature", "yes"), "--distance-feature: a streamed fit has no distance"),
        (module("ensemble.pt", "--design", "between", "--held-out", str(tmp_path / "mask.npy")),
         "--design between: --held-out marks values at the --x rows only"),
        (bad("--design", "outward"), "argument --design: invalid choice"),
        (bad("--teachers", s2), "--teachers must have shape"),
        (bad("--held-out", str(tmp_path / "held_short.npy")), "--held-out must have shape (6, 40)"),
        (bad("--covariance", "full"), "--covariance full is an output-covariance structure"),
        (bad("--task", "classification"), "--teachers for classification must be logits"),
        (classify + ["--noise-variances", s2], "--noise-variances is for regression teachers"),
        (classify + ["--observed", str(tmp_path / "mask.npy")], "--observed: "),
        (bad("--num-factors", "two"), "argument --num-factors: expected a positive whole number or auto"),
        (bad("--num-factors", "0"), "argument --num-factors: must be at least 1 or auto"),
        (bad("--device", "gpu"), "argument --device: expected cpu, cuda, cuda:N or mps"),
        (bad("--device", unavailable), f"--device {unavailable} but"),
        (_distill(tmp_path, "--stream", "--hidden", "8"), "--num-factors: --stream needs a number"),
        (bad("--x", str(tmp_path / "x_nan.npy")), "the first at row 3, column 0; the design points need finite inputs"),
        (bad("--hidden", "0"), "--hidden: widths must be positive"),
        (bad("--hidden", str(10 ** 12)), "--hidden (1000000000000,) needs about"),
        (bad("--x", str(tmp_path / "x_scalar.npy")), "holds a single number (a 0-d array); give an array with one row per point"),
        (bad("--x", str(tmp_path / "x_header.csv")), "remove a header line or start it with #"),
        (bad("--x", str(tmp_path / "x_3d.npy")), "the command line reads rows (m, d)"),
        (bad("--stream", "--hidden", "8", "--teachers", s2), "--teachers holds shape (6,): it must be"),
        (bad("--stream", "--hidden", "8", "--x", str(tmp_path / "x_header.csv").replace(".csv", ".npy")),
         "(not a .npy file, or an array of Python objects); save the array with np.save"),
        (bad("--out", str(x) + "/s.pt"), "is a file, not a folder"),
        (classify + ["--noise-given-factors", "yes"], "--noise-given-factors: the noise law that follows the factors is for"),
        (bad("--x", str(tmp_path / "missing.npy")), "--x: no file at"),
        (predict + ["--x", str(tmp_path / "x_nan.npy")], "--x: " + str(tmp_path / "x_nan.npy") + " holds 1 non-finite value(s)"),
        (["predict", "--student", str(tmp_path / "none.pt"), "--x", x, "--out", str(tmp_path / "p.npz")], "--student: no file at"),
        (["bench", "images", "--dataset", "mnist", "--output-dir", str(tmp_path / "o")], "--data-dir"),
        (["demo", "--num-factors", "0"], "argument --num-factors"),
    ]


def _python_names_in(message: str, command: str) -> list[str]:
    """Library argument names of ``command`` that stand as arguments in ``message`` (after "error: ")."""
    body = message.split(": error: ", 1)[-1].split(": warning: ", 1)[-1]
    found = []
    for name in flag_names(command):
        if "_" in name or name == "lr":
            hit = re.search(rf"(?<![\w./-]){re.escape(name)}(?!\w)", body)
        else:  # a plain word is English too: only as an argument (first, or before =, : or [)
            hit = re.match(rf"{re.escape(name)}\b", body) or re.search(rf"(?<![\w./-]){re.escape(name)}[=:\[]", body)
        if hit:
            found.append(name)
    return found


def test_every_error_is_one_line_naming_a_flag(tmp_path, capsys):
    _files(tmp_path)
    for argv, expected in _error_cases(tmp_path):
        command = " ".join(argv[:2]) if argv[0] == "bench" else argv[0]
        # With --no-progress the error is all there is; with progress on, only stage lines ("... ...") precede it.
        for quiet in (True, False):
            code = _status(argv + ["--no-progress"] if quiet else argv)
            err = capsys.readouterr().err
            lines = err.strip().splitlines()
            assert code == 2, (argv, err)
            assert "Traceback" not in err and lines, (argv, err)
            assert len(lines) == 1 if quiet else all(line.endswith(" ...") for line in lines[:-1]), (argv, err)
            message = lines[-1]
            assert message.startswith(f"pyro-dlf {command}: error: ") and expected in message, (argv, message)
            assert "--" in message.split(": error: ", 1)[1], (argv, message)
            assert _python_names_in(message, command) == [], (argv, message)



def test_debug_variable_shows_the_traceback(tmp_path, monkeypatch):
    _files(tmp_path)
    monkeypatch.setenv("PYRO_DLF_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="--x: no file at"):
        main(_distill(tmp_path, "--x", str(tmp_path / "missing.npy"), "--no-progress"))


def test_translation_table_names_only_real_flags():
    from pyro_dlf.cli.main import _LIBRARY_NAMES, _subparser
    from pyro_dlf.cli.plugins import installed_commands

    parser = build_parser()
    commands = list(_LIBRARY_NAMES) + [name for plugin in installed_commands() for name in plugin.flag_names]
    for command in commands:
        options = {o for action in _subparser(parser, command)._actions for o in action.option_strings}
        table = flag_names(command, parser)
        assert set(table.values()) <= options, (command, set(table.values()) - options)
    names = flag_names("distill")
    assert names["x_design"] == "--x" and names["teacher_outputs"] == "--teachers"
    assert names["teacher_noise_variances"] == "--noise-variances" and names["num_iterations"] == "--iterations"
    assert names["held_out"] == "--held-out" and names["hidden"] == "--hidden"
    assert flag_names("predict")["path"] == "--student"
    cases = {
        "num_factors=9 >= number of teachers=6: use num_factors <= 5": "--num-factors 9 >= number of teachers=6: use --num-factors <= 5",
        "covariance='full' is for (n, m, c) teachers": "--covariance full is for (n, m, c) teachers",
        "observed: teachers observed on other points; drop observed=": "--observed: teachers observed on other points; drop --observed",
        "lower lr (now 0.01) or raise num_iterations.": "lower --lr (now 0.01) or raise --iterations.",
        "teacher_outputs[0] returned 3 rows": "--teachers[0] returned 3 rows",
        "design='beyond' places points off x_design; pass design='given'": "--design beyond places points off --x; pass --design given",
        # Paths, quoted text, attributes and longer words stay as they are; a plain word only as an argument.
        "--x: cannot read '/data/held_out/x_design.npy' (held_out.npy, my_held_out)":
            "--x: cannot read '/data/held_out/x_design.npy' (held_out.npy, my_held_out)",
        "the teachers' hidden units and the task at hand": "the teachers' hidden units and the task at hand",
    }
    for message, expected in cases.items():
        assert translate(message, names) == expected
    assert translate("x contains 1 non-finite value(s); the x axis", flag_names("predict")) == "--x contains 1 non-finite value(s); the x axis"


def test_each_distinct_warning_printed_once_in_flag_words(tmp_path, capsys, monkeypatch):
    import pyro_dlf.api

    def noisy(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # as when every candidate body repeats its warnings
            for _ in range(3):
                warnings.warn("num_factors=9 >= number of teachers=6: use num_factors <= 5", UserWarning)
            warnings.warn("lower lr (now 0.01)\nor raise num_iterations", RuntimeWarning)
        raise ValueError("hidden: stop")

    _files(tmp_path)
    monkeypatch.setattr(pyro_dlf.api, "distill", noisy)
    assert main(_distill(tmp_path, "--no-progress")) == 2
    assert capsys.readouterr().err.splitlines() == [
        "pyro-dlf distill: warning: --num-factors 9 >= number of teachers=6: use --num-factors <= 5",
        "pyro-dlf distill: warning: lower --lr (now 0.01) or raise --iterations",
        "pyro-dlf distill: error: --hidden: stop",
    ]


def test_tqdm_disable_hides_the_bars_and_stage_lines_remain(tmp_path, capsys, monkeypatch):
    _files(tmp_path)
    argv = _distill(tmp_path, "--num-factors", "9", *_TINY)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert main(argv) == 0
    assert "it/s]" in capsys.readouterr().err  # bars by default
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err and "it/s" not in err and "%|" not in err, err
    lines = err.splitlines()
    assert lines[0] == f"Reading --x {tmp_path / 'x.npy'} and --teachers {tmp_path / 'f.npy'} ..."
    assert "Distilling 6 teachers at 40 design points (q = 9; 2 MMD steps, then 2 EM iterations) ..." in lines
    assert lines[-1] == f"Writing {tmp_path / 's.pt'} and {tmp_path / 's_fit.png'} ..."
    # The real library's warning (q above n - 1), once and in the flags' words.
    assert [line for line in lines if "warning" in line] == [
        "pyro-dlf distill: warning: --num-factors 9 >= number of teachers=6: 6 teachers span at most 5 directions, so the "
        "extra factors are not identified; use --num-factors <= 5"]
    assert "q = 9" in out
    # Choosing the body (the default --hidden auto) is announced before it starts.
    _record_distill(monkeypatch)
    assert main(_distill(tmp_path, "--num-factors", "2")) == 2
    assert ("Distilling 6 teachers at 40 design points (q = 2): first the body is chosen by held-out scores of the "
            "teachers' values (one fit per candidate), then the student (500 MMD steps, then 100 EM iterations) ...") \
        in capsys.readouterr().err.splitlines()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_cuda_fits_in_memory_on_the_gpu(tmp_path, capsys):
    _files(tmp_path)
    assert main(_distill(tmp_path, "--num-factors", "2", *_TINY, "--device", "cuda", "--no-progress")) == 0
    from pyro_dlf import Student

    student = Student.load(tmp_path / "s.pt")  # loads on the CPU
    assert next(student.dlf.parameters()).device.type == "cpu"
    assert main(["predict", "--student", str(tmp_path / "s.pt"), "--x", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "p.npz"), "--no-progress"]) == 0
    assert np.isfinite(np.load(tmp_path / "p.npz")["mean"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_teacher_module_on_cuda_evaluated_where_the_student_is_fitted(tmp_path, capsys):
    from pyro_dlf import Student

    x, _ = _module_files(tmp_path)
    assert main(_module_distill(tmp_path, "--design", "around", "--device", "cuda", *_TINY_DESIGN)) == 0
    assert ", design around (asked for; 80 design points from 40 rows; distance feature on)," in capsys.readouterr().out
    student = Student.load(tmp_path / "m.pt")
    assert next(student.dlf.parameters()).device.type == "cpu"
    assert np.isfinite(student.predict(x, 5).mean.numpy()).all()


def test_mistakes_with_files_name_the_flag_and_destroy_no_input(tmp_path, capsys):
    """An --out that is an input, an archive named .npy, complex values, a JSON that is no result: one line, status 2."""
    x, f = _files(tmp_path)
    np.savez(tmp_path / "archive.npy", a=x.numpy())  # np.savez appends .npz: rename it to look like one array
    os.replace(tmp_path / "archive.npy.npz", tmp_path / "archive.npy")
    np.save(tmp_path / "complex.npy", x.numpy().astype(np.complex64))
    (tmp_path / "list.json").write_text("[1, 2]")
    before = (tmp_path / "x.npy").read_bytes()
    s2 = str(tmp_path / "s2.npy")
    cases = [
        (_distill(tmp_path, "--no-progress", out="x.npy"), "--out"),
        (_distill(tmp_path, "--no-progress", out="s2.npy"), "--noise-variances file"),
        (_distill(tmp_path, "--no-progress", "--x", str(tmp_path / "archive.npy")), "--x: "),
        (_distill(tmp_path, "--no-progress", "--x", str(tmp_path / "complex.npy")), "--x: "),
        (_distill(tmp_path, "--no-progress", "--seed", str(2 ** 70)), "--seed"),
        (_distill(tmp_path)[:-2] + ["--no-progress", "--out", ""], "--out is empty"),
        (["predict", "--student", s2, "--x", str(tmp_path / "x.npy"), "--out", s2], "--out"),
        (["predict", "--student", str(tmp_path / "archive.npy"), "--x", str(tmp_path / "x.npy"), "--out",
          str(tmp_path / "p.npz")], "--student: "),
        (["predict", "--student", s2, "--x", str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.npz"), "--seed",
          str(2 ** 70)], "--seed"),
        (["bench", "report", str(tmp_path / "list.json"), "--output-dir", str(tmp_path / "o")], "inputs: "),
    ]
    for argv, expected in cases:
        code = _status(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert "\n" not in err and "Traceback" not in err and expected in err, (argv, err)
    assert (tmp_path / "x.npy").read_bytes() == before


def test_a_failed_distill_writes_nothing_and_a_diverged_fit_names_lr(tmp_path, capsys):
    """No folder of --out is made before the fit succeeds; a fit whose weights are not finite is not written."""
    _files(tmp_path)
    code = _status(_distill(tmp_path, "--no-progress", "--x", str(tmp_path / "missing.npy"), out="new/deeper/s.pt"))
    assert code == 2 and not (tmp_path / "new").exists(), capsys.readouterr().err
    capsys.readouterr()
    code = _status(_distill(tmp_path, "--no-progress", "--num-factors", "2", "--hidden", "4", "--iterations", "2", "--mmd-steps",
                            "0", "--lr", "1e12", out="new/s.pt"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err), err
    assert err[-1].startswith("pyro-dlf distill: error: ") and "diverged" in err[-1] and "--lr" in err[-1], err
    assert not (tmp_path / "new").exists()
    (tmp_path / "busy_fit.png").mkdir()  # the fit report's path, taken by a folder: said before the fit
    code = _status(_distill(tmp_path, "--no-progress", out="busy.pt"))
    assert code == 2 and "the fit report goes beside the student" in capsys.readouterr().err


def test_per_point_noise_variances_from_a_file(tmp_path, capsys):
    """(n, m) noise variances reach the library as a table (its per-input noise law), not flattened."""
    _files(tmp_path)
    np.save(tmp_path / "s2_points.npy", np.full((6, 40), 0.015))
    argv = _distill(tmp_path, "--no-progress", "--num-factors", "2", "--hidden", "4", "--iterations", "2", "--mmd-steps", "0",
                    "--noise-variances", str(tmp_path / "s2_points.npy"))
    assert _status(argv) == 0, capsys.readouterr().err
    assert "noise law per input" in capsys.readouterr().out


def test_values_beyond_float32_name_dtype_and_fit_in_float64(tmp_path, capsys):
    """Values whose sums of squares overflow float32 are refused naming --dtype float64 (the library's
    dtype=torch.float64 in the flag's words); with it the fit runs in float64 and predict reads --x in float64."""
    _files(tmp_path)
    np.save(tmp_path / "f.npy", 1e20 * np.load(tmp_path / "f.npy"))
    np.save(tmp_path / "s2.npy", 1e40 * np.load(tmp_path / "s2.npy"))
    argv = _distill(tmp_path, "--no-progress", "--num-factors", "2", "--hidden", "4", "--iterations", "2", "--mmd-steps", "0")
    assert _status(argv) == 2
    assert re.search(r"overflow float32 .*; rescale them \(e\.g\. to standard units\) or pass --dtype float64$",
                     capsys.readouterr().err.strip())
    assert _status(argv + ["--dtype", "float64"]) == 0, capsys.readouterr().err
    assert _status(["predict", "--student", str(tmp_path / "s.pt"), "--x", str(tmp_path / "x.npy"), "--out",
                    str(tmp_path / "p.npz")]) == 0, capsys.readouterr().err
    assert np.load(tmp_path / "p.npz")["mean"].dtype == np.float64


@pytest.mark.parametrize("argv", [["bench", "uci", "--data-dir", "x"], ["demo"]])
def test_lab_commands_without_the_lab_say_how_to_install_it(argv, monkeypatch, capsys):
    """A clone with the library alone: ``bench`` and ``demo`` end in one line naming the package to install,
    and their help says the same."""
    import pyro_dlf.cli.plugins as plugins

    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install ./benchmarks" in err and err.startswith(f"pyro-dlf {argv[0]}: error:")
    with pytest.raises(SystemExit) as stop:
        main([argv[0], "--help"])
    assert stop.value.code == 0 and "pip install ./benchmarks" in " ".join(capsys.readouterr().out.split())


def test_a_broken_lab_install_is_named_with_its_import_error(monkeypatch, capsys):
    import pyro_dlf.cli.plugins as plugins

    class Broken:
        name = "bench"

        def load(self):
            raise ImportError("No module named 'transformers'")

    class Replacing:
        name = "distill"  # a package may not replace the library's own commands

        def load(self):
            raise AssertionError("a reserved name is never loaded")

    monkeypatch.setattr(plugins, "entry_points", lambda group: [Broken(), Replacing()])
    assert main(["bench", "uci"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "installed but does not import (No module named 'transformers')" in err
