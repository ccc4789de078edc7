"""Print a package and the titan-* packages it needs (runtime and `test` extra), recursively."""

import pathlib
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib


def titan_deps(packages: pathlib.Path, name: str, with_test: bool) -> list[str]:
    meta = tomllib.loads((packages / name / "pyproject.toml").read_text())["project"]
    reqs = list(meta.get("dependencies", []))
    if with_test:
        reqs += meta.get("optional-dependencies", {}).get("test", [])
    names = (re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in reqs)
    return [n for n in names if n.startswith("titan-")]


def closure(packages: pathlib.Path, name: str) -> list[str]:
    seen, todo = [name], titan_deps(packages, name, with_test=True)
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.append(dep)
            todo += titan_deps(packages, dep, with_test=False)
    return seen


if __name__ == "__main__":
    print(" ".join(closure(pathlib.Path(sys.argv[1]), sys.argv[2])))
