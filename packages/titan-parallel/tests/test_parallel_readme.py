"""The README's first example runs as written and prints what it says."""

import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_readme_example_runs(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)  # one process, whatever launched pytest
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    expected = [line.split("# ")[-1].strip() for line in block.splitlines() if line.startswith("print(")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    assert out.getvalue().splitlines() == expected
