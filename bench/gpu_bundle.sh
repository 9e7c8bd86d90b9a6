#!/usr/bin/env bash
# What a GPU machine that has torch but not our web stack needs to run `make gpu-check`, carried with the
# working tree in one ignored folder (default .gpu/):
#   <dir>/wheels/  the wheels of the packages its image lacks, at the versions of this checkout's .venv,
#                  built for its Python (CPython 3.12, manylinux x86-64);
#   <dir>/data/    binarized MNIST for the training step (../shared/data does not travel).
#
#   bench/gpu_bundle.sh fetch [DIR]          # here, with the package registry at hand (make gpu-bundle)
#   bench/gpu_bundle.sh install [DIR] [SITE] # there, before the check: unpacks the wheels into SITE
#                                            # (default /tmp/made-gpu-site); then PYTHONPATH=SITE
# `make gpu-check GPU_CHECK_BUNDLE=.gpu` runs `install` itself.
set -euo pipefail

command=${1:-}
dir=${2:-.gpu}
root=$(cd "$(dirname "$0")/.." && pwd)

# Our runtime dependencies and their own that the GPU image (docs/gpu.md) does not hold, or holds at
# versions too old for them. numpy, safetensors, httpx, prometheus-client, tqdm, pillow, anyio, h11, click,
# pytest and pytest-timeout are there already.
PACKAGES=(fastapi starlette uvicorn pydantic pydantic_core pydantic-settings python-dotenv annotated-types
          typing-inspection typing_extensions annotated-doc orjson pysimdjson)
PYTHON_VERSION=3.12
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)

case "$command" in
fetch)
    python=${VENV_PYTHON:-$root/.venv/bin/python}
    [ -x "$python" ] || { echo "no $python: run make install first (the versions come from it)" >&2; exit 2; }
    rm -rf "$dir/wheels" && mkdir -p "$dir/wheels" "$dir/data"
    # Pin each to the version this checkout is tested with: two versions of one package break the install.
    pins=()
    for package in "${PACKAGES[@]}"; do
        version=$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package")
        pins+=("$package==$version")
    done
    platform_flags=()
    for platform in "${PLATFORMS[@]}"; do platform_flags+=(--platform "$platform"); done
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
        --implementation cp "${platform_flags[@]}" -d "$dir/wheels" "${pins[@]}"
    data=${MADE_DATA_DIR:-$root/../shared/data}
    if [ -f "$data/binarized_mnist.npz" ]; then
        cp "$data/binarized_mnist.npz" "$dir/data/"
    else
        echo "warning: $data/binarized_mnist.npz not found; the training step will report it missing" >&2
    fi
    echo "$(ls "$dir/wheels" | wc -l) wheels and $(ls "$dir/data" | wc -l) data file(s) in $dir:" \
        "$(du -sh "$dir" | cut -f1) (the tree that travels must stay under 64 MiB)"
    ;;
install)
    site=${3:-/tmp/made-gpu-site}
    compgen -G "$dir/wheels/*.whl" > /dev/null || { echo "no wheels in $dir/wheels: run fetch here" >&2; exit 2; }
    "${PYTHON:-python3}" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$dir"/wheels/*.whl
    echo "installed $(ls "$dir"/wheels/*.whl | wc -l) wheels into $site"
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
