#!/usr/bin/env bash
# Install the Debian packages that the tests and the demo need, when they are missing.
# As root this runs apt-get; otherwise it only says what is missing (tests that need a
# missing program skip with a reason).
set -euo pipefail

# program-to-check:debian-package
needs=(
  "dbus-daemon:dbus-daemon"
  "mosquitto:mosquitto"
  "openssl:openssl"
  "dbus-send:dbus-bin"
  "systemd-analyze:systemd"
  "fusermount3:fuse3"
  "nft:nftables"      # the uplink benchmark blocks a link with it (an honest outage)
  "tc:iproute2"       # ... and shapes it with tbf between network namespaces
  "iptables:iptables" # ... and holds its SYNs for the round trip (NFQUEUE, bench/syndelay.py)
  "faketime:faketime" # the fault campaign jumps the agent's clock (libfaketime, its process only)
)
missing=()
for pair in "${needs[@]}"; do
  prog=${pair%%:*}; pkg=${pair#*:}
  command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || missing+=("$pkg")
done
# PostgreSQL server binaries (initdb, pg_ctl) for the receiver's PostgreSQL tests and benchmark:
# they start a private throw-away cluster in a temporary directory, never the system one.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  missing+=("postgresql")
fi
# The broker's subscription check (receiver/mosquitto/dho_subscribe_acl.c) is a Mosquitto
# plugin compiled on first use: a C compiler and Mosquitto's plugin headers.
command -v cc >/dev/null 2>&1 || missing+=("gcc" "libc6-dev")
[ -e /usr/include/mosquitto_plugin.h ] || missing+=("mosquitto-dev")
[ -e /usr/include/mosquitto.h ] || missing+=("libmosquitto-dev")
# A software TPM 2.0 for the buffer's TPM-sealed key tests (tests/buffer/test_keys.py), and the
# TSS libraries systemd-creds loads for --with-key=tpm2 (the swtpm TCTI lets it reach swtpm).
command -v swtpm >/dev/null 2>&1 || missing+=("swtpm")
for lib in libtss2-esys.so.0:libtss2-esys-3.0.2-0 libtss2-rc.so.0:libtss2-rc0 \
           libtss2-mu.so.0:libtss2-mu0 libtss2-tcti-swtpm.so.0:libtss2-tcti-swtpm0; do
  compgen -G "/usr/lib/*/${lib%%:*}" >/dev/null || missing+=("${lib#*:}")
done
# A fresh Debian 12 python3 cannot make a venv without python3-venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=("python3-venv")
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  # --no-install-recommends keeps the set small; policy-rc.d stops services being
  # started by the package scripts (the tests start their own instances). The postgresql
  # package creates the system cluster 15/main but starts it through invoke-rc.d, which
  # policy-rc.d refuses, so it stays down.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.dho && chmod +x /usr/sbin/policy-rc.d.dho
  if [ ! -e /usr/sbin/policy-rc.d ]; then cp /usr/sbin/policy-rc.d.dho /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; fi
  rm -f /usr/sbin/policy-rc.d.dho
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "note: not root, so these Debian packages were not installed: ${missing[*]}" >&2
  echo "      tests that need them will be skipped." >&2
fi
