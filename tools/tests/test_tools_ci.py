"""The CI helper that decides which sibling wheels a package's isolated test env gets."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "ci"))

from sibling_closure import closure  # noqa: E402


def test_closure_follows_runtime_and_test_dependencies():
    pk = ROOT / "packages"
    assert closure(pk, "titan-mesh") == ["titan-mesh"]
    assert set(closure(pk, "titan-parallel")) == {"titan-parallel", "titan-mesh"}
    assert set(closure(pk, "titan-train")) == {
        "titan-train", "titan-mesh", "titan-parallel", "titan-models", "titan-ckpt", "titan-data"}
    # titan-models imports nothing distributed; only its tests use titan-mesh's process pool
    assert set(closure(pk, "titan-models")) == {"titan-models", "titan-mesh"}
