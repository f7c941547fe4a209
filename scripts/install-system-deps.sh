#!/usr/bin/env bash
# Installs the Debian packages that ocikit's tests and benchmarks drive as real peers.
# Only what is missing, and only as root; elsewhere the tests that need them skip with a reason.
set -euo pipefail
packages=(
  skopeo           # a registry client nobody here wrote
  docker-registry  # CNCF distribution, the reference registry
  umoci            # unpacks and writes images: the reference for layer application
  runc             # runs the bundles ocikit create writes
  wrk              # the HTTP load generator bench/registry.py drives
  busybox-static   # the tiny rootfs the bundle tests run
  debootstrap      # bench/unpack.py and the Debian acceptance test build a real image with it
  apache2-utils    # htpasswd: bcrypt password files for docker-registry
  openssl          # keys, certificates and token signatures in the client tests
  zfs-fuse         # a real ZFS pool for the zfs snapshotter tests
  lxc              # lxc-execute and lxc-start run what ocikit create --format lxc makes
  time             # GNU time: peak memory of each tool in bench/surgery.py
  postgresql       # the scale-out metadata store: a private cluster per test session
  haproxy          # the load balancer in front of the scale-out replicas; the TLS proxy naming certificate users
  curl             # a plain HTTP client through the registry's token flow and TLS
  tinyproxy-bin    # a real forward proxy for the S3 store's HTTP_PROXY tests (the binary alone: no service)
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install-system-deps: not root or no apt-get; not installing: ${missing[*]}" >&2
  exit 0
fi
# Packages such as docker-registry start a system service on install; the tests start their own
# instances on free ports, so keep the packaged services from starting (policy-rc.d, exit 101).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
