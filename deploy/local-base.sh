#!/usr/bin/env bash
# Make the base image for deploy/Dockerfile on a machine that reaches no container
# registry: a minimal Debian bookworm with python3 and python3-venv made with debootstrap
# from the Debian mirror apt already uses, imported into podman's storage.
#
#   deploy/local-base.sh [IMAGE]           # default localhost/python-base:3.11
#   podman --runtime runc --cgroup-manager cgroupfs build --network host --pull=never \
#     --build-arg BASE_IMAGE=localhost/python-base:3.11 -f deploy/Dockerfile -t dstore-batch .
#
# Needs root and Debian's podman, runc and debootstrap. Does nothing when IMAGE is
# already in podman's storage (FORCE=1 makes it again). Settings from the environment:
#   MIRROR   the Debian mirror (default: the first bookworm mirror in apt's sources)
#   SUITE    the Debian release (default bookworm: its python3 is 3.11)
#
# Quirks it takes care of:
# - Debian's python3 has no `python`: a symlink, as the Dockerfile runs `python -m venv`.
# - pip inside the build must trust whatever the host's pip trusts: the machine's CA
#   bundle is copied over the image's (a package proxy may present its own CA).
# - containers cannot raise RLIMIT_NOFILE here: /etc/containers/containers.conf gets
#   `default_ulimits = []` under [containers] when the file does not exist yet.
set -euo pipefail

image="${1:-localhost/python-base:3.11}"
suite="${SUITE:-bookworm}"

if [ "$(id -u)" != 0 ]; then
  echo "local-base.sh: run as root (debootstrap and podman's root storage)" >&2
  exit 1
fi
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null || {
    echo "local-base.sh: $tool is missing: apt-get install podman runc debootstrap" >&2
    exit 1
  }
done

conf=/etc/containers/containers.conf
if [ ! -e "$conf" ]; then
  mkdir -p /etc/containers
  printf '[containers]\n# RLIMIT_NOFILE cannot be raised on these machines.\ndefault_ulimits = []\n' \
    > "$conf"
  echo "local-base.sh: wrote $conf (default_ulimits = [])"
fi

if [ "${FORCE:-0}" != 1 ] && podman image exists "$image"; then
  echo "local-base.sh: $image already exists (FORCE=1 to make it again)"
  exit 0
fi

# The Debian mirror apt uses: deb822 `URIs:` or one-line `deb URI suite ...` entries,
# the first one that is not the security archive.
mirror="${MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
      2>/dev/null \
    | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
             -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\).*/\2/p' \
    | grep -v -e security -e '^$' | grep '/debian/\?$' | head -n 1 || true
  )"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

start=$(date +%s)
rootfs="$(mktemp -d /var/tmp/python-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "local-base.sh: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$rootfs" "$mirror" > "$rootfs.log" 2>&1 || {
  tail -n 30 "$rootfs.log" >&2
  rm -f "$rootfs.log"
  exit 1
}
rm -f "$rootfs.log"

ln -sf python3 "$rootfs/usr/bin/python"
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
# What an image does not need: apt's lists and downloaded packages, docs, man pages.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log

tar -C "$rootfs" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --quiet - "$image" >/dev/null
echo "local-base.sh: $image made in $(( $(date +%s) - start )) s" \
  "($(podman image inspect --format '{{.Size}}' "$image") bytes)"
