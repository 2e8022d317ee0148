"""The lab's commands on ``pyro-dlf``: registered through entry points, their literals in step with the code."""

import pytest

from pyro_dlf.cli import build_parser, main
from pyro_dlf.cli.plugins import GROUP, installed_commands


def test_the_lab_registers_bench_and_demo():
    from importlib.metadata import entry_points

    from pyro_dlf_bench.cli import BENCH, DEMO

    assert {p.name for p in entry_points(group=GROUP)} >= {"bench", "demo"}
    commands = {c.name: c for c in installed_commands()}
    assert commands["bench"] is BENCH and commands["demo"] is DEMO
    benchmarks = build_parser()._subparsers._group_actions[0].choices["bench"]._subparsers._group_actions[0].choices
    assert set(benchmarks) == {"uci", "svi", "images", "text", "seqkd", "scale", "report"}


def test_the_cli_lists_the_same_image_families():
    from pyro_dlf.design.images import IMAGE_FAMILIES
    from pyro_dlf_bench.cli import _IMAGE_FAMILIES

    assert _IMAGE_FAMILIES == IMAGE_FAMILIES


def test_a_bench_mistake_is_one_line(tmp_path, capsys):
    status = main(["bench", "uci", "--data-path", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out"),
                   "--cache-dir", "", "--splits", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("pyro-dlf bench uci: error:")
    with pytest.raises(SystemExit):
        main(["bench", "nonsense"])
    capsys.readouterr()
    # A missing --data-dir, or a --datasets name not in it, is named before any folder is made.
    (tmp_path / "sets" / "yacht").mkdir(parents=True)
    for argv, expected in ((["--data-dir", str(tmp_path / "none")], "--data-dir: no folder at"),
                           (["--data-dir", str(tmp_path / "sets"), "--datasets", "bogus"],
                            "--datasets: no set 'bogus' under --data-dir " + repr(str(tmp_path / "sets")) + "; choose from yacht")):
        status = main(["bench", "uci", *argv, "--output-dir", str(tmp_path / "out2"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert status == 2 and err.count("\n") == 0 and expected in err, err
        assert not (tmp_path / "out2").exists()
