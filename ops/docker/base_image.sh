#!/usr/bin/env bash
# Make a Debian 12 (bookworm) base image locally, for building the project's image where no image
# registry is reachable: mmdebstrap assembles the root file system from the machine's configured apt
# sources, `docker import` turns it into an image. It holds python3 with its venv module (what the
# Dockerfile's stages need), passwd (useradd), and Debian's redis-server, redis-sentinel and redis-cli, so
# that the same image also stands in for the compose file's `redis` image (REDIS_IMAGE).
#
#   ops/docker/base_image.sh [IMAGE]     # default ovms-base:bookworm; does nothing if IMAGE exists
set -euo pipefail
image=${1:-ovms-base:bookworm}
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image exists (docker image rm $image to rebuild it)"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
mmdebstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates,passwd,redis-server,redis-sentinel,redis-tools \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$workdir/rootfs.tar"
docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$workdir/rootfs.tar" "$image"
echo "built $image"
