"""The pyro-dlf command line (smoke run of the demo)."""

import json
import os

from pyro_dlf.cli import main


def test_demo_smoke_writes_table_png_and_json(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--no-progress", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
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


import numpy as np
import pytest
import torch

from synthetic import synthetic_teachers


def _files(tmp_path, classification=False):
    truth, x, f = synthetic_teachers(6, num_points=40, num_outputs=3 if classification else None, num_factors=2)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "f.npy", f.numpy())
    np.savetxt(tmp_path / "x.csv", x.numpy(), delimiter=",")
    np.save(tmp_path / "s2.npy", np.linspace(0.01, 0.02, 6))
    np.save(tmp_path / "held.npy", (np.random.default_rng(0).random((6, 40)) < 0.5).astype(np.int8))
    return x, f


def test_distill_and_predict_from_files(tmp_path, capsys):
    x, f = _files(tmp_path)
    out = tmp_path / "models" / "student.pt"
    assert main(["distill", "--x", str(tmp_path / "x.npy"), "--teachers", str(tmp_path / "f.npy"), "--noise-variances",
                 str(tmp_path / "s2.npy"), "--num-factors", "2", "--hidden", "16", "--iterations", "5", "--mmd-steps", "20",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Distilled 6 teachers at 40 design points (regression)" in printed
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
        (distill + ["--out", str(tmp_path / "s.pt"), "--x", str(tmp_path / "words.csv")], "--x: cannot read"),
        (distill + ["--out", str(blocked / "s.pt")], "--out: cannot write"),
        (distill + ["--out", str(tmp_path)], "is a folder"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--hidden", "0"], "--hidden: widths must be positive"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--loading-hidden", "0"], "argument --loading-hidden: must be at least 1"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--num-factors", "0"], "argument --num-factors: must be at least 1"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--teachers", s2], "teacher_outputs"),
        (["distill", "--x", x, "--teachers", f, "--num-factors", "2", "--out", str(tmp_path / "s.pt")], "teacher_noise_variances"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--held-out", str(tmp_path / "held_short.npy")], "held_out must have shape (6, 40)"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--held-out", f], "--held-out: the mask must hold only 0 and 1"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--noise-given-factors", "maybe"], "argument --noise-given-factors: invalid choice"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--training-length", "2"], "argument --training-length: must be a fraction in (0, 1]"),
        (distill + ["--out", str(tmp_path / "s.pt"), "--training-length", "long"], "argument --training-length: expected a number"),
        (["predict", "--student", str(tmp_path / "none.pt"), "--x", x, "--out", str(tmp_path / "p.npz")], "path: no file at"),
        (["predict", "--student", s2, "--x", x, "--out", str(tmp_path / "p.npz")], "not a readable pyro_dlf student file"),
        (["predict", "--student", s2, "--x", x, "--out", str(tmp_path / "p.csv"), "--samples"], "--samples: draws need an .npz"),
        (["predict", "--student", s2, "--x", x, "--out", str(tmp_path / "p.txt")], "must end in .npz or .csv"),
        (["bench", "uci", "--data-path", str(tmp_path), "--teacher-epochs", "0"], "argument --teacher-epochs: must be at least 1"),
        (["bench", "uci", "--data-path", str(tmp_path), "--output-dir", str(blocked / "out")], "--output-dir: cannot write"),
        (["bench", "images", "--dataset", "mnist", "--output-dir", str(tmp_path / "o")], "data_dir"),
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
