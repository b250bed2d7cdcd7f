#!/usr/bin/env bash
# Container entrypoint: start what APP_MODE needs and stop it all cleanly on SIGTERM.
#
#   all       (default) prepare, then the role's processes side by side:
#               supervisor: gunicorn + rqworker app_starts (restarted on its own, see
#               queue_restarted);  worker: gunicorn + run_worker;
#               standalone: gunicorn
#   prepare   migrations, static files and (supervisor/standalone) the first admin user
#   serve     the role's processes without preparing (Kubernetes runs `prepare` in an init container)
#   web | queue | agent   one process only, in the foreground (to scale them apart)
#   anything else         run as a command, e.g. `python manage.py shell`
set -euo pipefail
cd "$(dirname "$0")/.."  # the code's root: /app/src in the image

mode="${APP_MODE:-standalone}"
role="${1:-all}"
port="${PORT:-80}"

# prometheus-client multiprocess mode: every process of this container writes its counters
# here and /metrics sums them; files of a previous container life must not be summed in.
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/app-metrics}"
rm -rf "${PROMETHEUS_MULTIPROC_DIR}"
mkdir -p "${PROMETHEUS_MULTIPROC_DIR}"

say() { echo "entrypoint: $*" >&2; }

prepare() {
  python manage.py migrate --noinput
  python manage.py collectstatic --noinput -v0
  if [ "$mode" != "worker" ]; then
    python manage.py ensure_admin
  fi
}

web() {
  # Every gunicorn setting is in gunicorn.conf.py (shared with make run and the tests);
  # workers, threads and timeouts come from GUNICORN_* variables (docs/configuration.md).
  export GUNICORN_BIND="0.0.0.0:${port}"
  exec python -m gunicorn -c "${PWD}/gunicorn.conf.py"
}

queue() { exec python manage.py rqworker app_starts; }

queue_restarted() {
  # The start queue beside the web server, restarted on its own whenever it exits (after 1 s,
  # doubling to 30 s; reset once it ran a minute): it waits out Redis outages itself, and
  # should it still exit, that must not stop the web server (run_together stops everything
  # when one of its processes ends). SIGTERM/SIGINT stop it for good, letting a job finish.
  local delay=1 status started
  child="" sleeper=""
  stop_queue() {
    trap '' TERM INT
    if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null || true; fi
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" || true; fi
    exit 0
  }
  trap stop_queue TERM INT
  while true; do
    started=$SECONDS
    python manage.py rqworker app_starts &
    child=$!
    status=0
    wait "$child" || status=$?
    child=""
    if (( SECONDS - started >= 60 )); then delay=1; fi
    say "queue worker exited (status ${status}); restarting it in ${delay} s, the web server keeps serving"
    sleep "$delay" &
    sleeper=$!
    wait "$sleeper" || true
    sleeper=""
    delay=$(( delay * 2 > 30 ? 30 : delay * 2 ))
  done
}
agent() { exec python manage.py run_worker; }

run_together() {
  # Each process in the background; SIGTERM/SIGINT go to all of them, and when any one
  # exits the others are stopped too, so the container exits and gets restarted as a whole
  # (the start queue is given as queue_restarted, which does not exit on its own).
  local pids=() name
  for name in "$@"; do
    ( "$name" ) &
    pids+=("$!")
    say "started ${name} (pid $!)"
  done
  signalled=0
  stop_all() {
    trap '' TERM INT
    say "stopping ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
  }
  trap 'signalled=1; stop_all' TERM INT
  local status=0
  wait -n "${pids[@]}" || status=$?
  stop_all
  wait "${pids[@]}" 2>/dev/null || true
  if [ "$signalled" = 1 ]; then
    say "stopped on request"
    exit 0
  fi
  say "a process exited (status ${status}): stopped the others"
  exit "$(( status == 0 ? 1 : status ))"
}

serve() {
  case "$mode" in
    supervisor) run_together web queue_restarted ;;
    worker) run_together web agent ;;
    standalone) web ;;
    *) say "APP_MODE must be supervisor, worker or standalone (got ${mode})"; exit 2 ;;
  esac
}

case "$role" in
  all) prepare; serve ;;
  serve) serve ;;
  prepare) prepare ;;
  web) web ;;
  queue) queue ;;
  agent) agent ;;
  *) exec "$@" ;;
esac
