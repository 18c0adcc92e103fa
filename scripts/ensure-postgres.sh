#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries (initdb, pg_ctl, postgres) are on this
# machine, installing Debian's postgresql package if they are not. Idempotent;
# starts no service.
set -euo pipefail

have() {
  command -v initdb >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

if have; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "PostgreSQL server binaries not found; install the 'postgresql' package (as root: apt-get install postgresql)" >&2
  exit 1
fi
echo "installing PostgreSQL server binaries (apt-get install postgresql)" >&2
export DEBIAN_FRONTEND=noninteractive
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  # keep the package from starting a system-wide server
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
fi
trap '[ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
have || { echo "postgresql installed but initdb still not found" >&2; exit 1; }
