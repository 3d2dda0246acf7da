#!/usr/bin/env bash
# Builds the emostream container image with Debian's podman, no image registry needed:
#  1. installs podman, runc, mmdebstrap, fuse-overlayfs and uidmap from Debian if missing,
#  2. makes the base image from Debian's packages (mmdebstrap --variant=minbase bookworm, plus
#     the libraries the binaries link: libssl3, libstdc++6, and ca-certificates) and imports it
#     as localhost/emostream-base:bookworm (once),
#  3. builds the release binaries (no test hooks) and the ONNX Runtime library,
#  4. `podman build` of Containerfile → localhost/emostream:<version> (and :latest).
# podman runs with runc (crun refuses these machines' hybrid cgroups) and ulimits no higher than
# the host's, from .cache/container/containers.conf (CONTAINERS_CONF); scripts that run the image
# source `scripts/container-image.sh env` for the same settings.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=.cache/container
mkdir -p "$work"
cat > "$work/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$root/$work/containers.conf"
[ "${1:-}" = env ] && { echo "export CONTAINERS_CONF=$CONTAINERS_CONF"; exit 0; }

need=()
for p in podman runc mmdebstrap fuse-overlayfs newuidmap; do command -v "$p" >/dev/null || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -q podman runc mmdebstrap fuse-overlayfs uidmap >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q podman runc mmdebstrap fuse-overlayfs uidmap >/dev/null; }
fi

base=localhost/emostream-base:bookworm
if ! podman image exists "$base"; then
  echo "making the base image from Debian packages (mmdebstrap, ~1 min)" >&2
  mmdebstrap --quiet --variant=minbase --include=libssl3,libstdc++6,ca-certificates \
    bookworm "$work/rootfs.tar"
  podman import --quiet "$work/rootfs.tar" "$base" >/dev/null
  rm -f "$work/rootfs.tar"
fi

ort=$(scripts/setup-ort.sh)
cargo build --release --bins --quiet
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/lib" "$ctx/models" "$ctx/config"
cp target/release/emostream target/release/emostream-loadgen target/release/train "$ctx/bin/"
strip --strip-debug "$ctx"/bin/*
cp -L "$ort" "$(dirname "$ort")/libonnxruntime_providers_shared.so" "$ctx/lib/"
cp -r models/goemotions-minilm-l6 "$ctx/models/"
cp config/default.toml "$ctx/config/"
podman build --quiet --build-arg BASE="$base" -f Containerfile \
  -t "localhost/emostream:$version" -t localhost/emostream:latest "$ctx" >/dev/null
echo "localhost/emostream:$version"
