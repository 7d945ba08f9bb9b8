# Helpers for longshore's scripts: logging, waiting with a deadline, provisioning brokers.
# shellcheck shell=bash

log() { printf '\033[1m[longshore]\033[0m %s\n' "$*" >&2; }

# wait_for DESCRIPTION SECONDS COMMAND...: run COMMAND until it succeeds or time runs out.
wait_for() {
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${seconds}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

apt_install() {
  log "installing $* from Debian's packages"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

# RabbitMQ on 127.0.0.1:5672 (guest/guest): started (and installed) if it is not running.
ensure_rabbitmq() {
  if port_open 127.0.0.1 5672; then
    log "RabbitMQ is up on 127.0.0.1:5672"
    return
  fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  # await_startup fails until the node has registered: retry it.
  wait_for "RabbitMQ to start" 120 rabbitmqctl await_startup
  wait_for "RabbitMQ on 127.0.0.1:5672" 60 port_open 127.0.0.1 5672
  log "RabbitMQ is up on 127.0.0.1:5672"
}
