"""The README's pipeline / context parallel example runs as written and prints what it says."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_pipeline_readme_example_runs():
    text = README.read_text()
    section = text.split("<!-- --- pipeline / context parallel --- -->", 1)[1]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    expected = [line.split("# ")[-1].strip() for line in block.splitlines() if line.startswith(("print(", "    print("))]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {"__name__": "readme_pp"})
    assert out.getvalue().splitlines() == expected
