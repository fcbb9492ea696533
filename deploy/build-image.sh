#!/bin/sh
# Build the paas image (default paas:dev) with no registry and no network in the build:
#   1. the base image, with debootstrap, when it is missing (BASE_IMAGE unset);
#   2. a wheelhouse on the host: the dependencies' wheels (kept while pyproject.toml is
#      unchanged) and the paas wheel, unpacked (every time: seconds);
#   3. `docker build --network none` of deploy/Dockerfile from that wheelhouse.
# Usage: deploy/build-image.sh   env: IMAGE, BASE_IMAGE, PYTHON (the venv's python)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
IMAGE=${IMAGE:-paas:dev}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
CONTEXT=$ROOT/build/image

if [ -z "${BASE_IMAGE:-}" ]; then
    BASE_IMAGE=paas-base:bookworm
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || "$HERE/base-image.sh" "$BASE_IMAGE"
fi

mkdir -p "$CONTEXT/wheels/deps"
WHEEL=$ROOT/build/image-wheel
rm -rf "$WHEEL" "$CONTEXT/code"
# The dependencies' wheels, made again only when pyproject.toml changes.
STAMP=$CONTEXT/wheels/deps/.pyproject.sha256
WANT=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "build-image: wheels of the dependencies" >&2
    rm -f "$CONTEXT"/wheels/deps/*.whl
    "$PYTHON" -m pip wheel --quiet --wheel-dir "$CONTEXT/wheels/deps" "$ROOT"
    rm -f "$CONTEXT"/wheels/deps/paas-*.whl
    echo "$WANT" >"$STAMP"
fi
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WHEEL" "$ROOT"
# Unpacked (and compiled) here, so that the image takes the code in one COPY: seconds.
"$PYTHON" -m pip install --quiet --no-deps --target "$CONTEXT/code" "$WHEEL"/*.whl
rm -rf "$CONTEXT/code/bin"
cp "$HERE/Dockerfile" "$CONTEXT/Dockerfile"

echo "build-image: $IMAGE from $BASE_IMAGE" >&2
docker build --quiet --network none --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --tag "$IMAGE" "$CONTEXT" >/dev/null
echo "build-image: built $IMAGE" >&2
