#!/bin/sh
# Build the base image paas-base:bookworm with no registry: debootstrap a minimal
# Debian bookworm (python3, python3-venv) from the mirror apt on this host uses, then
# `docker import` it. Takes about a minute; run by `make image` only when the image
# is missing. Usage: deploy/base-image.sh [IMAGE]   (default paas-base:bookworm)
set -eu

IMAGE=${1:-paas-base:bookworm}
SUITE=bookworm

# The mirror this host's apt is configured with (deb822 or one-line sources).
mirror() {
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -e "$file" ] || continue
        uri=$(awk '/^URIs:/ {print $2; exit}' "$file")
        case "$uri" in *security*|"") ;; *) echo "$uri"; return ;; esac
    done
    if [ -e /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
        [ -n "$uri" ] && { echo "$uri"; return; }
    fi
    echo http://deb.debian.org/debian
}

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "base-image: installing debootstrap" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

MIRROR=${MIRROR:-$(mirror)}
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/paas-base.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT INT TERM

echo "base-image: debootstrap $SUITE from $MIRROR" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
    tail -n 20 "$ROOT.log" >&2
    rm -f "$ROOT.log"
    echo "base-image: debootstrap failed (log above)" >&2
    exit 1
}
rm -f "$ROOT.log"
# Smaller and reproducible enough: no apt lists or caches in the image.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb

tar --numeric-owner -C "$ROOT" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
echo "base-image: built $IMAGE" >&2
