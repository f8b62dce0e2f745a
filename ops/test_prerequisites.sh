#!/usr/bin/env bash
# What `make test` needs from the machine beyond Python: Debian packages for the deployment tests (Docker
# engine and compose, mmdebstrap for the image's local base, Redis with TLS and Sentinel, network
# namespaces and their firewall rules). As root they are installed; otherwise this stops at once, naming
# what is missing and how to get it, rather than let the suite fail test by test.
set -euo pipefail
declare -A needs=(
    [docker.io]=/usr/sbin/dockerd
    [docker-compose]=/usr/bin/docker-compose
    [mmdebstrap]=/usr/bin/mmdebstrap
    [redis-server]=/usr/bin/redis-server
    [redis-sentinel]=/usr/bin/redis-sentinel
    [iproute2]=/usr/sbin/ip
    [iptables]=/usr/sbin/iptables
    [util-linux]=/usr/bin/setpriv
)
missing=()
for package in "${!needs[@]}"; do
    [ -x "${needs[$package]}" ] || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    # Without root the tests cannot start dockerd (nor make network namespaces: those tests skip).
    if [ "$(id -u)" -ne 0 ] && ! docker info >/dev/null 2>&1; then
        echo "make test needs a running Docker engine this user may use (or run it as root: it starts dockerd)" >&2
        exit 1
    fi
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "make test needs these Debian packages: ${missing[*]}" >&2
    echo "install them as root (apt-get install ${missing[*]}), or run make test as root on Debian to have them installed" >&2
    exit 1
fi
echo "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
