#!/bin/sh
# The compose cluster of deploy/docker-compose.yml, for `make cluster` and the tests.
#   deploy/cluster.sh up     start it and wait until it works: every container healthy
#                            and three agents ready in `paas nodes`; print the lines the
#                            CLI on this host needs
#   deploy/cluster.sh down   stop it and remove its containers, networks and volumes
#   deploy/cluster.sh logs   every container's log
# env: PAAS_PROJECT (compose project name, default paas), PAAS_IMAGE (paas:dev),
#      PAAS_SCHEDULER_PORT_1/_2 (17070, 17071), PAAS (the host's paas command)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PROJECT=${PAAS_PROJECT:-paas}
PORT_1=${PAAS_SCHEDULER_PORT_1:-17070}
PORT_2=${PAAS_SCHEDULER_PORT_2:-17071}
PAAS=${PAAS:-$ROOT/.venv/bin/paas}
STATE=$ROOT/build/cluster/$PROJECT
export PAAS_SCHEDULER_PORT_1=$PORT_1 PAAS_SCHEDULER_PORT_2=$PORT_2

# docker compose v2 where it is installed, else docker-compose 1.x.
if docker compose version >/dev/null 2>&1; then
    compose() { docker compose -p "$PROJECT" -f "$HERE/docker-compose.yml" "$@"; }
elif command -v docker-compose >/dev/null 2>&1; then
    compose() { docker-compose -p "$PROJECT" -f "$HERE/docker-compose.yml" "$@"; }
else
    echo "cluster: neither 'docker compose' nor 'docker-compose' is installed" >&2
    exit 1
fi

# Wait until `paas nodes --json` lists three ready nodes, or fail after $1 seconds.
wait_ready() {
    deadline=$(($(date +%s) + $1))
    while :; do
        ready=$("$PAAS" nodes --json 2>/dev/null | grep -o '"state": *"ready"' | wc -l || true)
        [ "$ready" -ge 3 ] && return 0
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "cluster: $ready of 3 agents ready after $1 s; logs: deploy/cluster.sh logs" >&2
            return 1
        fi
        sleep 1
    done
}

case "${1:-}" in
up)
    # Healthchecks gate each step (etcd, then schedulers, then the token, then agents);
    # `up` returns once every service has started in that order.
    compose up -d --quiet-pull 2>&1 | grep -v '^Creating\|^Starting\|is up-to-date' >&2 || true
    for service in etcd-1 etcd-2 etcd-3 scheduler-1 scheduler-2 agent-1 agent-2 agent-3; do
        id=$(compose ps -q "$service")
        [ -n "$id" ] || { echo "cluster: $service did not start; logs: deploy/cluster.sh logs" >&2; exit 1; }
    done
    mkdir -p "$STATE"
    # The admin credentials, out of the tls volume, for the CLI on this host.
    umask 077
    compose run --rm --no-deps -T --entrypoint cat tls-init /etc/paas/tls/admin.credentials \
        >"$STATE/admin.credentials.new"
    mv "$STATE/admin.credentials.new" "$STATE/admin.credentials"
    export PAAS_SCHEDULER="127.0.0.1:$PORT_1,127.0.0.1:$PORT_2"
    export PAAS_CREDENTIALS="$STATE/admin.credentials"
    wait_ready "${PAAS_CLUSTER_TIMEOUT:-120}"
    echo "export PAAS_SCHEDULER=$PAAS_SCHEDULER"
    echo "export PAAS_CREDENTIALS=$PAAS_CREDENTIALS"
    ;;
down)
    compose down --volumes --remove-orphans --timeout 45 2>&1 | grep -v '^Stopping\|^Removing' >&2 || true
    rm -rf "$STATE"
    ;;
logs)
    compose logs --no-color --timestamps
    ;;
*)
    echo "usage: deploy/cluster.sh up|down|logs" >&2
    exit 2
    ;;
esac
