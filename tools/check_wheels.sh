#!/usr/bin/env bash
# Does every package install on its own, the way a user installs it, and do its entry points run?
#
#   bash tools/check_wheels.sh            (from anywhere in the checkout; needs uv and Python 3.11/3.12)
#
# 1. builds each package's sdist and wheel (`uv build --package NAME`: the wheel is built from the
#    sdist, so a file missing from either shows) and checks that each wheel carries the LICENSE;
# 2. for each package makes a FRESH venv and installs that wheel (plus reed-core's wheel for a
#    domain package) with `uv pip install`, then runs every console script and every module of the
#    package that has an `if __name__ == "__main__":` block with --help (found in the installed
#    files, so a new entry point is checked without editing this script).
# Any failure prints the package and the command (with its output) and the script exits 1.
#
# Why `uv pip install` and not pip: it resolves the way pip does, from the wheels' own metadata
# only (none of the workspace's override-dependencies, constraints or uv.lock apply: --no-config,
# and it runs outside the checkout), so a dependency that a pip user cannot install fails here
# too; but it takes torch and its CUDA libraries (about 3 GB) from uv's cache, hard-linked, instead
# of downloading them again for every venv. Each venv resolves the newest releases the packages
# allow, so this needs the package index (PyPI).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PYTHON=${REED_CHECK_PYTHON:-$(uv python find --no-project '>=3.11,<3.13')}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/reed-wheels.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
T0=$SECONDS

PACKAGES=(reed-core reed-image reed-protein reed-molecule)
[[ -d packages/reed-kernels ]] && PACKAGES+=(reed-kernels)

echo "== build (python: $PYTHON)"
for pkg in "${PACKAGES[@]}"; do
    uv build --quiet --package "$pkg" --out-dir "$WORK/dist" 2>"$WORK/build.log" || {
        cat "$WORK/build.log" >&2
        echo "check_wheels: FAILED: $pkg: uv build --package $pkg" >&2
        exit 1
    }
done
wheel_of() { ls "$WORK"/dist/"${1//-/_}"-*.whl; }
for pkg in "${PACKAGES[@]}"; do
    "$PYTHON" - "$(wheel_of "$pkg")" "$REPO/LICENSE" <<'EOF' || exit 1
import sys, zipfile
wheel, license = sys.argv[1], open(sys.argv[2], "rb").read()
names = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/licenses/LICENSE")]
if not names or zipfile.ZipFile(wheel).read(names[0]) != license:
    sys.exit(f"check_wheels: FAILED: {wheel}: no .dist-info/licenses/LICENSE equal to the repository's LICENSE")
EOF
    echo "   $(basename "$(wheel_of "$pkg")")"
done
printf '   %d s\n' $((SECONDS - T0))

failures=0
for pkg in "${PACKAGES[@]}"; do
    t=$SECONDS
    venv="$WORK/venv-$pkg"
    wheels=("$(wheel_of "$pkg")")
    [[ $pkg == reed-core || $pkg == reed-kernels ]] || wheels+=("$(wheel_of reed-core)")
    echo "== $pkg: fresh venv, uv pip install ${wheels[*]##*/}"
    (cd "$WORK" && uv venv --quiet --no-config --python "$PYTHON" "$venv")
    if ! (cd "$WORK" && uv pip install --quiet --no-config --python "$venv/bin/python" "${wheels[@]}") \
        >"$WORK/install.log" 2>&1; then
        tail -n 40 "$WORK/install.log" >&2
        echo "check_wheels: FAILED: $pkg: uv pip install ${wheels[*]##*/} (into a fresh venv)" >&2
        failures=$((failures + 1))
        continue
    fi
    # the package's console scripts and `python -m` modules, from its installed files
    mapfile -t commands < <(cd "$WORK" && "$venv/bin/python" - "$pkg" <<'EOF'
import importlib.metadata as md, sys
dist = md.distribution(sys.argv[1])
for ep in dist.entry_points:
    if ep.group == "console_scripts":
        print(ep.name)
for f in sorted(dist.files or [], key=str):
    if f.suffix == ".py" and '__name__ == "__main__"' in f.read_text():
        module = str(f.with_suffix("")).replace("/", ".").removesuffix(".__main__")
        print(f"python -m {module}")
EOF
    )
    for cmd in "${commands[@]}"; do
        # shellcheck disable=SC2086  # cmd is "python -m module" or a script name
        if (cd "$WORK" && PATH="$venv/bin:$PATH" timeout 300 $cmd --help) >"$WORK/cmd.log" 2>&1; then
            echo "   ok: $cmd --help"
        else
            tail -n 30 "$WORK/cmd.log" >&2
            echo "check_wheels: FAILED: $pkg: $cmd --help (in a venv with only ${wheels[*]##*/})" >&2
            failures=$((failures + 1))
        fi
    done
    ((${#commands[@]})) || echo "   (no entry points)"
    if [[ $pkg == reed-kernels ]]; then  # a library: its modules import on a machine without a GPU
        mods=$(cd "$WORK" && "$venv/bin/python" -c "import importlib.metadata as md; print(' '.join(
            str(f.with_suffix('')).replace('/', '.') for f in md.distribution('reed-kernels').files
            if f.suffix == '.py' and not f.name.startswith('__')))")
        if (cd "$WORK" && "$venv/bin/python" -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" $mods) \
            >"$WORK/cmd.log" 2>&1; then
            echo "   ok: import $mods"
        else
            tail -n 30 "$WORK/cmd.log" >&2
            echo "check_wheels: FAILED: $pkg: import of its modules" >&2
            failures=$((failures + 1))
        fi
    fi
    rm -rf "$venv"
    printf '   %d s\n' $((SECONDS - t))
done

printf '== %d packages, %d failures, %d s\n' "${#PACKAGES[@]}" "$failures" $((SECONDS - T0))
((failures == 0))
