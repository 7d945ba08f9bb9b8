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
# The package is installed either way: tests that stop a broker start nodes of their own
# (and the TLS test makes their certificates with openssl).
ensure_rabbitmq() {
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  command -v openssl >/dev/null || apt_install openssl
  if port_open 127.0.0.1 5672; then
    log "RabbitMQ is up on 127.0.0.1:5672"
    return
  fi
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  # await_startup fails until the node has registered: retry it.
  wait_for "RabbitMQ to start" 120 rabbitmqctl await_startup
  wait_for "RabbitMQ on 127.0.0.1:5672" 60 port_open 127.0.0.1 5672
  log "RabbitMQ is up on 127.0.0.1:5672"
}

# PostgreSQL on 127.0.0.1:5432 with a `test` database the `postgres` role reaches over TCP
# without a password: started (and installed, and so configured) if it is not running.
ensure_postgres() {
  if ! port_open 127.0.0.1 5432; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    local hba="/etc/postgresql/${version}/main/pg_hba.conf"
    # A test machine: local TCP connections need no password.
    if ! grep -q "longshore-tests" "$hba"; then
      sed -i '1i host all all 127.0.0.1/32 trust # longshore-tests' "$hba"
    fi
    log "starting PostgreSQL ${version}"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for "PostgreSQL on 127.0.0.1:5432" 60 port_open 127.0.0.1 5432
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE test"
  fi
  log "PostgreSQL is up on 127.0.0.1:5432"
}

# Redis on 127.0.0.1:6379: started (and installed) if it is not running. The package is
# installed either way: a test freezes a Redis server of its own.
ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if ! port_open 127.0.0.1 6379; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --logfile /tmp/longshore-redis.log
    wait_for "Redis on 127.0.0.1:6379" 30 port_open 127.0.0.1 6379
  fi
  log "Redis is up on 127.0.0.1:6379"
}

# A headless browser for the dashboard test: Debian's chromium and its WebDriver
# (chromedriver), installed if missing. Exports CHROMEDRIVER and CHROMIUM for the test.
ensure_browser() {
  if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
    apt_install chromium chromium-driver
  fi
  export CHROMEDRIVER=${CHROMEDRIVER:-$(command -v chromedriver)}
  export CHROMIUM=${CHROMIUM:-$(command -v chromium)}
  log "a headless browser: $("$CHROMIUM" --version 2>/dev/null | head -n 1)"
}

SQS_PORT=4566
SQS_ENDPOINT="http://127.0.0.1:${SQS_PORT}"
LOCALSTACK_VERSION=2026.3.0
MOTO_VERSION=5.2.5

sqs_answers() { curl -fsS -o /dev/null "${SQS_ENDPOINT}/_localstack/health" 2>/dev/null || curl -fsS -o /dev/null "${SQS_ENDPOINT}/moto-api/" 2>/dev/null; }

# Python 3.13 for LocalStack's runtime (3.11 and 3.12 fail at import). A candidate must
# run: pyenv's shims exist on PATH for versions that are not selected.
find_python313() {
  local candidate
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 /root/.pyenv/versions/3.13*/bin/python3.13 python3.13; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

# An SQS emulator on 127.0.0.1:4566: LocalStack's runtime (what docker-compose users run), or
# moto's server when no Python 3.13 is at hand. Installed into .build/ on first use; stopped
# by stop_services.
ensure_sqs_emulator() {
  if sqs_answers; then
    log "an SQS emulator answers on ${SQS_ENDPOINT}"
    return
  fi
  mkdir -p .build
  local python
  if python=$(find_python313); then
    if [ ! -x .build/localstack/bin/python ] || ! .build/localstack/bin/python -c 'import localstack' 2>/dev/null; then
      log "installing LocalStack ${LOCALSTACK_VERSION} into .build/localstack"
      "$python" -m venv .build/localstack
      .build/localstack/bin/pip install -q "localstack-core[base-runtime]==${LOCALSTACK_VERSION}" \
        'cbor2<6' 'pyopenssl<25' 'cryptography<45' service_identity
    fi
    log "starting LocalStack (SQS) on ${SQS_ENDPOINT}"
    mkdir -p .build/localstack-data
    SERVICES=sqs GATEWAY_LISTEN="127.0.0.1:${SQS_PORT}" LOCALSTACK_HOST="127.0.0.1:${SQS_PORT}" \
      SQS_ENDPOINT_STRATEGY=path OVERRIDE_IN_DOCKER=0 DNS_ADDRESS=0 SKIP_SSL_CERT_DOWNLOAD=1 \
      DISABLE_EVENTS=1 FILESYSTEM_ROOT="$PWD/.build/localstack-data" \
      LOCALSTACK_VOLUME_DIR="$PWD/.build/localstack-data" \
      .build/localstack/bin/python -m localstack.runtime.main >.build/localstack.log 2>&1 &
  else
    log "no Python 3.13 for LocalStack; falling back to moto's server (slower; see README)"
    if [ ! -x .build/moto/bin/moto_server ]; then
      python3 -m venv .build/moto
      .build/moto/bin/pip install -q "moto[server]==${MOTO_VERSION}"
    fi
    .build/moto/bin/moto_server -H 127.0.0.1 -p "${SQS_PORT}" >.build/moto.log 2>&1 &
  fi
  STARTED_PIDS+=("$!")
  wait_for "the SQS emulator on ${SQS_ENDPOINT}" 90 sqs_answers
  log "the SQS emulator is up on ${SQS_ENDPOINT}"
}

STARTED_PIDS=()
stop_services() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}

# docker-compose.yml parses and resolves (Debian's docker-compose; no docker engine needed).
check_compose_file() {
  command -v docker-compose >/dev/null || apt_install docker-compose
  log "checking docker-compose.yml with docker-compose config"
  docker-compose -f docker-compose.yml config -q
  docker-compose -f docker-compose.yml --profile sqs config -q
}
