#!/usr/bin/env bash
# Fill ops/docker/wheelhouse/ with wheels of everything the image installs, for builds in which pip cannot
# reach PyPI (`make docker_build_offline`). pip runs in a container of the base image itself, so that the
# wheels and the environment markers match the image's Python (Debian's 3.11.2, where the host's may be
# another 3.11.x with other dependencies), on the host's network and trusting the host's CA certificates
# (a proxy that re-signs TLS is trusted by the host, not by a fresh Debian image). pip's cache is kept on
# the host (PIP_CACHE_DIR, default ~/.cache/ovms-image-pip): a rebuilt wheelhouse then holds the very same
# files, which keeps Docker's layer cache valid from one clone to the next.
#
#   ops/docker/wheelhouse.sh [BASE_IMAGE]     # default ovms-base:bookworm
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:-ovms-base:bookworm}
wheelhouse=$PWD/ops/docker/wheelhouse
ca_bundle=/etc/ssl/certs/ca-certificates.crt
pip_cache=${PIP_CACHE_DIR:-$HOME/.cache/ovms-image-pip}
mkdir -p "$pip_cache"
docker run --rm --network host \
    -v "$PWD:/src:ro" -v "$wheelhouse:/wheels" -v "$pip_cache:/root/.cache/pip" \
    -v "$ca_bundle:/host-ca.crt:ro" -e PIP_CERT=/host-ca.crt \
    "$image" sh -euc '
        mkdir /tmp/src && cd /src && cp -r pyproject.toml README.md ovms api tasks inference /tmp/src/
        python3 -m venv /tmp/venv
        /tmp/venv/bin/pip wheel -q --disable-pip-version-check --wheel-dir /wheels "/tmp/src[monitoring,models]" setuptools wheel
        rm -f /wheels/ovms_celery-*.whl
    '
echo "$(find "$wheelhouse" -name '*.whl' | wc -l) wheels in $wheelhouse"
