#!/usr/bin/env bash
# Test one package in isolation: build its wheel (and its sibling dependencies' wheels), install
# them into a fresh venv with nothing else but what they declare (their `test` extra included),
# and run the package's tests against the installed wheel, never the source tree.
#   usage: tools/ci/test_package.sh [--setup-only | --test-only] titan-mesh [pytest args...]
# --setup-only builds and installs (then stops); --test-only tests what a --setup-only run left, so
# .ci/run can install the six packages one after the other and test them side by side.
set -euo pipefail
phase=all
case "${1:-}" in --setup-only) phase=setup; shift;; --test-only) phase=test; shift;; esac
name=${1:?usage: tools/ci/test_package.sh [--setup-only|--test-only] titan-NAME [pytest args]}; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
pkg="$root/packages/$name"
[ -f "$pkg/pyproject.toml" ] || { echo "no package at $pkg" >&2; exit 2; }
work="$root/.ci-work/isolated/$name"
py=${PYTHON:-python3}
mod=${name//-/_}

unset PYTHONDONTWRITEBYTECODE  # spawned workers re-import torch: cached bytecode saves ~10 s each

run_tests() {
  echo "-- $name: testing the installed wheel ($1)"
  cd "$pkg"
  TIKTOKEN_CACHE_DIR="" OMP_NUM_THREADS=1 TORCHINDUCTOR_CACHE_DIR="$root/.inductor-cache" \
    "$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
}

if [ "$phase" = test ]; then
  [ -x "$work/venv/bin/python" ] || { echo "$name: no venv at $work (run --setup-only first)" >&2; exit 2; }
  run_tests "$(cat "$work/where")" "$@"
  exit
fi
rm -rf "$work"; mkdir -p "$work/dist"

# The package and, recursively, the titan-* packages it (or its test extra) depends on.
closure=$("$py" "$root/tools/ci/sibling_closure.py" "$root/packages" "$name")
echo "-- $name: building wheels for: $closure"
# One build env and one wheel per package for the whole CI run (wheels are rebuilt when sources change).
shared="$root/.ci-work/wheels"
mkdir -p "$shared"
if [ ! -x "$shared/build-env/bin/python" ]; then
  "$py" -m venv "$shared/build-env"
  "$shared/build-env/bin/pip" install -q build hatchling >/dev/null
fi
for dep in $closure; do
  stamp="$shared/$dep.stamp"
  newest=$(find "$root/packages/$dep" -type f -not -path '*/__pycache__/*' -newer "$stamp" 2>/dev/null | head -1 || true)
  if [ ! -f "$stamp" ] || [ -n "$newest" ]; then
    rm -f "$shared/${dep//-/_}"-*.whl
    "$shared/build-env/bin/python" -m build -q --wheel --no-isolation --outdir "$shared" "$root/packages/$dep" >/dev/null
    touch "$stamp"
  fi
  cp "$shared/${dep//-/_}"-*.whl "$work/dist/"
done

"$py" -m venv "$work/venv"
wheels=()
for dep in $closure; do
  whl=$(ls "$work/dist/${dep//-/_}"-*.whl)
  if [ "$dep" = "$name" ]; then wheels+=("$whl[test]"); else wheels+=("$whl"); fi
done
# uv (installed with hatch) links packages from its cache: much faster than pip for torch.
if command -v uv >/dev/null 2>&1; then
  uv pip install -q --python "$work/venv/bin/python" "${wheels[@]}"
else
  "$work/venv/bin/pip" install -q "${wheels[@]}" 2>&1 | grep -v "is ignored" || true
fi
"$work/venv/bin/pip" check

where=$("$work/venv/bin/python" -c "import $mod, os; print(os.path.dirname($mod.__file__))")
case "$where" in "$work"/venv/*) ;; *) echo "$mod imported from $where, not the wheel" >&2; exit 1;; esac
echo "$where" > "$work/where"
[ "$phase" = setup ] && exit 0
run_tests "$where" "$@"
