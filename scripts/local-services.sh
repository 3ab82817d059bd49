#!/usr/bin/env bash
# Install and start what tmsops uses on this machine, on Debian or Ubuntu, as root:
# Debian's prometheus, the PostgreSQL extensions HypoPG and pg_qualstats (pg_stat_statements and
# pg_qualstats preloaded: PostgreSQL is restarted once), and Chromium for the browser test.
# It starts PostgreSQL and Redis if they are installed but stopped. Safe to run again.
# `make services` runs it; CI runs it before `make test`.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
if [[ ! -d /etc/postgresql ]]; then
  echo "services: PostgreSQL is not installed (apt-get install postgresql); nothing done" >&2
  exit 1
fi
pg_version="$(ls /etc/postgresql | sort -n | tail -1)"
packages=(prometheus "postgresql-$pg_version-hypopg" "postgresql-$pg_version-pg-qualstats" chromium chromium-driver)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "services: installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The optimizer reads pg_stat_statements and pg_qualstats: both must be preloaded (a restart).
preload=/etc/postgresql/$pg_version/main/conf.d/91-tmsops-optimizer.conf
if [[ ! -f $preload ]]; then
  mkdir -p "$(dirname "$preload")"
  cat >"$preload" <<'CONF'
# tmsops optimizer: workload capture (pg_stat_statements) and predicate statistics (pg_qualstats)
shared_preload_libraries = 'pg_stat_statements,pg_qualstats'
pg_stat_statements.track = top
pg_stat_statements.max = 5000
pg_qualstats.sample_rate = 1
CONF
  pg_ctlcluster --skip-systemctl-redirect "$pg_version" main restart || true
fi
# The machine starts PostgreSQL and Redis before the session; start them again if stopped.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start || true
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi

