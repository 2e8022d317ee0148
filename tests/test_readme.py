"""The README's Pyro example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_pyro_example_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    draws = namespace["draws"]
    assert draws.shape == (1000, 1, 100)
    assert namespace["loss"] < namespace["first_loss"]


def test_readme_one_call_example_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2, "README has no one-call example"
    namespace = {}
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    prediction = namespace["prediction"]
    assert prediction.function_samples.shape == (1000, 200)
    assert namespace["student"].dlf.hidden in ((16,), (32,))
