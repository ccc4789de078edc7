"""The README's first example runs as written and prints what it says."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {})
    assert out.getvalue().splitlines() == [
        "2048 1792 1793", "<|begin_of_text|>In the beginning", "(4, 128) True", "True"]


def test_benchmark_runs():
    from titan_data import bench

    results = bench.main(["--seq-len", "64", "--batch", "2", "--seconds", "0.05"])
    assert set(results) == {"pretokenized", "streaming (memory)", "streaming (jsonl)"}
    assert all(rate > 0 for rate in results.values())
