#!/usr/bin/env bash
# Local services for development and the demo: Orthanc, Redis, and the platform's own
# processes (web server, Celery worker, Celery beat).
#
#   platform/services.sh install [orthanc|redis|chromium|node|compose|all]   Debian packages, when missing
#   platform/services.sh start   [orthanc|redis|web|worker|beat|all|app|everything]
#   platform/services.sh stop    [same]
#   platform/services.sh status  [same]
#
# `all` is orthanc + redis (the backing services), `app` is web + worker + beat,
# `everything` is both. Every process keeps its pid file and log under var/ (or
# $PLATFORM_VAR_DIR). Starting what already runs, or stopping what is stopped, is a no-op.
#
# Environment (defaults in brackets):
#   PLATFORM_VAR_DIR [<repo>/var]   ORTHANC_HTTP_PORT [port of ORTHANC_URL, else 8042]
#   ORTHANC_USERNAME [platform]     ORTHANC_PASSWORD [platform-dev-password]
#   REDIS_URL [redis://127.0.0.1:6379/0]
#   PLATFORM_HTTP_HOST [127.0.0.1]  PLATFORM_HTTP_PORT [8000]   PLATFORM_VENV [<repo>/.venv]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="${PLATFORM_VAR_DIR:-$REPO/var}"
LOG="$VAR/log"
RUN="$VAR/run"
VENV="${PLATFORM_VENV:-$REPO/.venv}"

ORTHANC_USERNAME="${ORTHANC_USERNAME:-platform}"
ORTHANC_PASSWORD="${ORTHANC_PASSWORD:-platform-dev-password}"
if [[ -z "${ORTHANC_HTTP_PORT:-}" ]]; then
  ORTHANC_HTTP_PORT="$(python3 -c 'import sys,urllib.parse as u; print(u.urlsplit(sys.argv[1]).port or 8042)' "${ORTHANC_URL:-http://127.0.0.1:8042}")"
fi
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
read -r REDIS_HOST REDIS_PORT < <(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or 6379)' "$REDIS_URL")
HTTP_HOST="${PLATFORM_HTTP_HOST:-127.0.0.1}"
HTTP_PORT="${PLATFORM_HTTP_PORT:-8000}"

say() { printf '%s\n' "$*"; }
die() { printf 'services.sh: %s\n' "$*" >&2; exit 1; }

# --- helpers ---------------------------------------------------------------------------
pid_alive() { # pidfile -> 0 when the process it names runs
  # The pid file can vanish between the test and the read (Celery rewrites it while it
  # detaches): a missing file reads as "not running", silently.
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

settled_pid() { # pidfile -> the pid, once the file reads again (celery rewrites it once
  # while it detaches); "?" when it does not within 5 s
  local pid="" tries=0
  until pid=$(cat "$1" 2>/dev/null) && [[ -n "$pid" ]] || (( ++tries > 25 )); do sleep 0.2; done
  echo "${pid:-?}"
}

http_ok() { # url [user pass] -> 0 on a 2xx answer
  python3 - "$@" <<'PY' 2>/dev/null
import base64, sys, urllib.request
req = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 3:
    token = base64.b64encode(f"{sys.argv[2]}:{sys.argv[3]}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
with urllib.request.urlopen(req, timeout=2) as r:
    sys.exit(0 if 200 <= r.status < 300 else 1)
PY
}

redis_ping() { # host port -> 0 when a Redis there answers PING
  local reply=""
  { exec 3<>"/dev/tcp/$1/$2"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  read -r -t 2 reply <&3 || true
  exec 3>&- 3<&-
  [[ "$reply" == "+PONG"* || "$reply" == "-NOAUTH"* ]]
}

wait_for() { # seconds description command... -> waits until the command succeeds
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    (( SECONDS < deadline )) || die "$what did not come up within ${seconds} s"
    sleep 0.2
  done
}

stop_pidfile() { # name pidfile [seconds]
  local name=$1 pidfile=$2 seconds=${3:-30}
  if ! pid_alive "$pidfile"; then
    rm -f "$pidfile"; say "$name: not running"; return 0
  fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + seconds))
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS >= deadline )); then
      say "$name: still running after ${seconds} s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
  say "$name: stopped (pid $pid)"
}

can_install() {
  [[ "$(id -u)" == 0 ]] && return 0
  command -v sudo >/dev/null && sudo -n true 2>/dev/null
}

apt_install() { # packages...
  if ! command -v apt-get >/dev/null; then
    die "apt-get not found: install $* with your system's package manager"
  fi
  if ! can_install; then
    die "need root or password-less sudo to install $*; run as root: apt-get update && apt-get install -y $*"
  fi
  local sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo -n"
  say "installing Debian packages: $*"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

DICOMWEB_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so

# --- install ---------------------------------------------------------------------------
install_orthanc() {
  if command -v Orthanc >/dev/null && [[ -f "$DICOMWEB_PLUGIN" ]]; then
    say "orthanc: installed ($(command -v Orthanc))"; return 0
  fi
  apt_install orthanc orthanc-dicomweb
}

install_redis() {
  if redis_ping "$REDIS_HOST" "$REDIS_PORT"; then
    say "redis: a server answers on $REDIS_HOST:$REDIS_PORT, nothing to install"; return 0
  fi
  if command -v redis-server >/dev/null; then
    say "redis: installed ($(command -v redis-server))"; return 0
  fi
  apt_install redis-server
}

install_chromium() {
  if command -v chromium >/dev/null; then
    say "chromium: installed ($(command -v chromium))"; return 0
  fi
  apt_install chromium
}

install_node() { # Node.js >= 20 and npm, to build the viewer (frontend/)
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  local major; major="$(node -p 'process.versions.node.split(".")[0]')"
  # Debian 12's own nodejs is 18: then install 20+ by other means (nodejs.org, NodeSource).
  [[ "$major" -ge 20 ]] || die "node: Node.js $major found; the viewer's build (Vite 8) needs 20 or newer"
  say "node: installed ($(command -v node), $(node --version))"
}

install_compose() { # only to validate docker-compose.yml in tests (no Docker engine needed)
  if command -v docker-compose >/dev/null; then
    say "compose: installed ($(command -v docker-compose))"; return 0
  fi
  apt_install docker-compose
}

# --- Orthanc ---------------------------------------------------------------------------
ORTHANC_PID="$RUN/orthanc.pid"
ORTHANC_CONFIG="$VAR/orthanc/orthanc.json"

orthanc_up() { http_ok "http://127.0.0.1:$ORTHANC_HTTP_PORT/system" "$ORTHANC_USERNAME" "$ORTHANC_PASSWORD"; }

start_orthanc() {
  if pid_alive "$ORTHANC_PID" && orthanc_up; then
    say "orthanc: already running (pid $(cat "$ORTHANC_PID"), port $ORTHANC_HTTP_PORT)"; return 0
  fi
  if orthanc_up; then
    say "orthanc: an Orthanc not started by this script answers on port $ORTHANC_HTTP_PORT; using it"
    return 0
  fi
  command -v Orthanc >/dev/null || die "Orthanc is not installed: run platform/services.sh install orthanc"
  [[ -f "$DICOMWEB_PLUGIN" ]] || die "the DICOMweb plugin is missing: run platform/services.sh install orthanc"
  mkdir -p "$VAR/orthanc/storage" "$LOG" "$RUN"
  # The shipped config with absolute storage paths and the port/credentials from the env.
  python3 - "$REPO/platform/orthanc/orthanc.json" "$ORTHANC_CONFIG" "$VAR/orthanc/storage" \
    "$ORTHANC_HTTP_PORT" "$ORTHANC_USERNAME" "$ORTHANC_PASSWORD" <<'PY'
import json, sys
src, dst, storage, port, user, password = sys.argv[1:]
config = json.load(open(src))
config.update(StorageDirectory=storage, IndexDirectory=storage, HttpPort=int(port),
              RegisteredUsers={user: password})
with open(dst, "w") as f:
    json.dump(config, f, indent=2)
PY
  chmod 600 "$ORTHANC_CONFIG"
  (cd "$VAR/orthanc" && exec setsid Orthanc "$ORTHANC_CONFIG" >>"$LOG/orthanc.log" 2>&1 </dev/null) &
  echo $! >"$ORTHANC_PID"
  local deadline=$((SECONDS + 60))
  until orthanc_up; do
    pid_alive "$ORTHANC_PID" || die "orthanc exited while starting; see $LOG/orthanc.log"
    (( SECONDS < deadline )) || die "orthanc did not answer /system within 60 s; see $LOG/orthanc.log"
    sleep 0.2
  done
  say "orthanc: started (pid $(cat "$ORTHANC_PID"), http://127.0.0.1:$ORTHANC_HTTP_PORT, log $LOG/orthanc.log)"
}

stop_orthanc() { stop_pidfile orthanc "$ORTHANC_PID" 30; }

status_orthanc() {
  if orthanc_up; then
    local who="not started by this script"; pid_alive "$ORTHANC_PID" && who="pid $(cat "$ORTHANC_PID")"
    say "orthanc: up on port $ORTHANC_HTTP_PORT ($who)"
  else
    say "orthanc: down (port $ORTHANC_HTTP_PORT)"; return 1
  fi
}

# --- Redis -----------------------------------------------------------------------------
REDIS_PID="$RUN/redis.pid"

start_redis() {
  if redis_ping "$REDIS_HOST" "$REDIS_PORT"; then
    local who="not started by this script"; pid_alive "$REDIS_PID" && who="pid $(cat "$REDIS_PID")"
    say "redis: already answering on $REDIS_HOST:$REDIS_PORT ($who)"; return 0
  fi
  case "$REDIS_HOST" in
    127.0.0.1|localhost|::1) ;;
    *) die "no Redis answers on $REDIS_HOST:$REDIS_PORT and it is not a loopback address: start it there" ;;
  esac
  command -v redis-server >/dev/null || die "redis-server is not installed: run platform/services.sh install redis"
  mkdir -p "$VAR/redis" "$LOG" "$RUN"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$VAR/redis" \
    --pidfile "$REDIS_PID" --logfile "$LOG/redis.log" --save 60 1 --appendonly no
  wait_for 30 redis redis_ping 127.0.0.1 "$REDIS_PORT"
  say "redis: started (pid $(cat "$REDIS_PID"), 127.0.0.1:$REDIS_PORT, data $VAR/redis)"
}

stop_redis() {
  if [[ ! -s "$REDIS_PID" ]] && redis_ping "$REDIS_HOST" "$REDIS_PORT"; then
    say "redis: not started by this script, leaving it running"; return 0
  fi
  stop_pidfile redis "$REDIS_PID" 30
}

status_redis() {
  if redis_ping "$REDIS_HOST" "$REDIS_PORT"; then
    local who="not started by this script"; pid_alive "$REDIS_PID" && who="pid $(cat "$REDIS_PID")"
    say "redis: up on $REDIS_HOST:$REDIS_PORT ($who)"
  else
    say "redis: down ($REDIS_HOST:$REDIS_PORT)"; return 1
  fi
}

# --- the platform's processes ----------------------------------------------------------
WEB_PID="$RUN/web.pid"
WORKER_PID="$RUN/worker.pid"
BEAT_PID="$RUN/beat.pid"

need_venv() { [[ -x "$VENV/bin/python" ]] || die "no virtualenv at $VENV: run make venv"; }

web_up() { http_ok "http://$HTTP_HOST:$HTTP_PORT/accounts/login/"; }

start_web() {
  if pid_alive "$WEB_PID"; then say "web: already running (pid $(cat "$WEB_PID"))"; return 0; fi
  need_venv; mkdir -p "$LOG" "$RUN"
  # Granian has no daemon mode: it runs in the background in its own session, and its main
  # process writes (and on exit removes) the pid file that stop_web signals.
  rm -f "$WEB_PID"
  (cd "$REPO" && exec setsid "$VENV/bin/granian" --interface wsgi config.wsgi:application \
    --host "$HTTP_HOST" --port "$HTTP_PORT" --workers "${WEB_CONCURRENCY:-2}" --blocking-threads 4 \
    --workers-kill-timeout 30 --pid-file "$WEB_PID" --access-log >>"$LOG/web.log" 2>&1 </dev/null) &
  local launched=$!
  local deadline=$((SECONDS + 60))
  until web_up && pid_alive "$WEB_PID"; do
    if ! kill -0 "$launched" 2>/dev/null; then
      rm -f "$WEB_PID"; die "web exited while starting; see $LOG/web.log"
    fi
    (( SECONDS < deadline )) || die "web did not answer on $HTTP_HOST:$HTTP_PORT within 60 s; see $LOG/web.log"
    sleep 0.3
  done
  say "web: started (pid $(cat "$WEB_PID"), http://$HTTP_HOST:$HTTP_PORT/, log $LOG/web.log)"
}

start_worker() {
  if pid_alive "$WORKER_PID"; then say "worker: already running (pid $(cat "$WORKER_PID"))"; return 0; fi
  need_venv; mkdir -p "$LOG" "$RUN"
  (cd "$REPO" && "$VENV/bin/celery" -A worker worker -Q "${CELERY_QUEUES:-cpu,gpu}" \
    --concurrency "${CELERY_CONCURRENCY:-1}" --hostname "platform@%h" \
    --detach --pidfile "$WORKER_PID" --logfile "$LOG/worker.log")
  wait_for 30 worker pid_alive "$WORKER_PID"
  local pid; pid=$(settled_pid "$WORKER_PID")
  # Started means ready for jobs: the node answers a ping (its first boot imports torch and
  # MONAI, which takes a while on a busy machine). A worker that exits meanwhile is an error.
  local node; node="platform@$("$VENV/bin/python" -c 'import socket; print(socket.gethostname())')"
  local deadline=$((SECONDS + ${WORKER_READY_TIMEOUT_S:-180}))
  until (cd "$REPO" && "$VENV/bin/celery" -A worker inspect ping -d "$node" -t 2 >/dev/null 2>&1); do
    pid_alive "$WORKER_PID" || die "worker exited while starting; see $LOG/worker.log"
    (( SECONDS < deadline )) || die "worker (pid $pid) did not answer a ping within ${WORKER_READY_TIMEOUT_S:-180} s; see $LOG/worker.log"
    sleep 1
  done
  say "worker: started and answering (pid $pid, queues ${CELERY_QUEUES:-cpu,gpu}, log $LOG/worker.log)"
}

start_beat() {
  if pid_alive "$BEAT_PID"; then say "beat: already running (pid $(cat "$BEAT_PID"))"; return 0; fi
  need_venv; mkdir -p "$LOG" "$RUN"
  (cd "$REPO" && "$VENV/bin/celery" -A worker beat --schedule "$VAR/celerybeat-schedule" \
    --detach --pidfile "$BEAT_PID" --logfile "$LOG/beat.log")
  wait_for 30 beat pid_alive "$BEAT_PID"
  say "beat: started (pid $(settled_pid "$BEAT_PID"), log $LOG/beat.log)"
}

stop_web() { stop_pidfile web "$WEB_PID" 30; }
stop_worker() { stop_pidfile worker "$WORKER_PID" 60; }
stop_beat() { stop_pidfile beat "$BEAT_PID" 30; }

status_web() {
  if pid_alive "$WEB_PID" && web_up; then say "web: up on http://$HTTP_HOST:$HTTP_PORT/ (pid $(cat "$WEB_PID"))"
  else say "web: down"; return 1; fi
}
status_worker() {
  if pid_alive "$WORKER_PID"; then say "worker: running (pid $(cat "$WORKER_PID"))"
  else say "worker: down"; return 1; fi
}
status_beat() {
  if pid_alive "$BEAT_PID"; then say "beat: running (pid $(cat "$BEAT_PID"))"
  else say "beat: down"; return 1; fi
}

# --- dispatch --------------------------------------------------------------------------
expand() { # target -> components
  case "$1" in
    all) echo "orthanc redis" ;;
    app) echo "web worker beat" ;;
    everything) echo "orthanc redis web worker beat" ;;
    orthanc|redis|web|worker|beat|chromium|node|compose) echo "$1" ;;
    *) die "unknown target '$1' (orthanc, redis, web, worker, beat, chromium, node, compose, all, app, everything)" ;;
  esac
}

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

main() {
  local action="${1:-}"; shift || true
  local targets=("$@"); [[ ${#targets[@]} -gt 0 ]] || targets=(all)
  local components=() t
  for t in "${targets[@]}"; do
    # shellcheck disable=SC2207
    components+=($(expand "$t"))
  done
  local c rc=0
  case "$action" in
    install)
      for c in "${components[@]}"; do
        case "$c" in orthanc|redis|chromium|node|compose) "install_$c" ;; *) say "$c: nothing to install" ;; esac
      done ;;
    start)
      for c in "${components[@]}"; do
        [[ "$c" == chromium || "$c" == node || "$c" == compose ]] && die "$c is not a service"
        "start_$c"
      done ;;
    stop)
      # Stop in reverse order: the app before the services it uses.
      for ((i = ${#components[@]} - 1; i >= 0; i--)); do
        [[ "${components[i]}" == chromium || "${components[i]}" == node || "${components[i]}" == compose ]] || "stop_${components[i]}"
      done ;;
    status)
      for c in "${components[@]}"; do
        [[ "$c" == chromium || "$c" == node || "$c" == compose ]] && continue
        "status_$c" || rc=3
      done ;;
    -h|--help|help|"") usage; [[ -n "$action" ]] || exit 2 ;;
    *) usage >&2; die "unknown action '$action'" ;;
  esac
  return $rc
}

main "$@"
