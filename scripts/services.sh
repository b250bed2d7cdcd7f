#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on loopback; start them from the machine's
# binaries (installing Debian's packages if missing) or say in one line how to.
set -u

pg_up() { python3 - <<'PY' 2>/dev/null
import socket; s = socket.create_connection(("127.0.0.1", 5432), timeout=1); s.close()
PY
}
redis_up() { python3 - <<'PY' 2>/dev/null
import socket; s = socket.create_connection(("127.0.0.1", 6379), timeout=1)
s.sendall(b"PING\r\n"); assert s.recv(16).startswith(b"+PONG"); s.close()
PY
}
wait_for() { for _ in $(seq 1 50); do "$1" && return 0; sleep 0.2; done; return 1; }
apt_install() {
  command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] || return 1
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >/dev/null 2>&1
}

if ! pg_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql; fi
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$version" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    wait_for pg_up && { su postgres -c "psql -qc \"ALTER USER postgres PASSWORD NULL\"" >/dev/null 2>&1 || true; }
  fi
  if ! pg_up; then
    echo "PostgreSQL is not answering on 127.0.0.1:5432: start it (pg_ctlcluster <version> main start) with trust auth for user postgres" >&2
    exit 1
  fi
fi

if ! redis_up; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  if command -v redis-server >/dev/null 2>&1; then
    mkdir -p /tmp/app-supervisor-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/app-supervisor-redis --logfile /tmp/app-supervisor-redis/redis.log >/dev/null 2>&1 || true
  fi
  if ! wait_for redis_up; then
    echo "Redis is not answering on 127.0.0.1:6379: start it (redis-server --port 6379 --save '')" >&2
    exit 1
  fi
fi
