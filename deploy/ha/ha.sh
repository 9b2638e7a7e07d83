#!/usr/bin/env bash
# The standard PostgreSQL HA stack on one machine, from Debian packages: etcd (one member) as
# Patroni's store, two PostgreSQL 15 nodes managed by Patroni (a primary and a synchronous
# standby, `synchronous_mode: true`), and HAProxy in front, sending connections to whichever
# node Patroni's REST API says is the primary (`GET /primary` answers 200 on the leader only).
#
#   deploy/ha/ha.sh start        # start what is not running (a stopped node rejoins)
#   deploy/ha/ha.sh stop         # stop everything, keep the data
#   deploy/ha/ha.sh status       # the members, their roles and lag, and the HAProxy backend
#   deploy/ha/ha.sh leader       # print the leader's node name (node1 or node2)
#   deploy/ha/ha.sh destroy      # stop everything and remove the state directory
#
# Everything lives under SNAPSHOTD_HA_DIR (default: snapshotd-ha under the system temp dir).
# Ports (environment, defaults): HA_PORT 5440 (HAProxy: the one address clients use),
# HA_PG_PORT 5441 (node1; node2 is +1), HA_REST_PORT 8441 (node1's Patroni; node2 +1),
# HA_ETCD_PORT 2441 (client; peer +1), HA_STATS_PORT 8440 (HAProxy's stats page).
# PostgreSQL refuses to run as root, so etcd and Patroni (and so postgres) run as the
# `postgres` user when this script runs as root.
#
# The timings, and why (see docs/operations.md, "Production topology"):
# - Patroni: ttl 10 s (the leader key's lease: a lost node is replaced after at most this long),
#   loop_wait 2 s (how often each Patroni looks), retry_timeout 4 s (how long a DCS or
#   PostgreSQL call is retried before the leader demotes itself); Patroni requires
#   loop_wait + 2 × retry_timeout ≤ ttl.
# - HAProxy checks /primary every 1 s (inter 1s), marks a node down after 2 failed checks
#   (fall 2) and up after 1 good one (rise 1, since Patroni answers 200 on one node only), and
#   `on-marked-down shutdown-sessions` cuts every connection to a node as it is marked down, so
#   a client never keeps writing to a demoted or recovering node.
set -euo pipefail

STATE=${SNAPSHOTD_HA_DIR:-${TMPDIR:-/tmp}/snapshotd-ha}
HA_PORT=${HA_PORT:-5440}
HA_PG_PORT=${HA_PG_PORT:-5441}
HA_REST_PORT=${HA_REST_PORT:-8441}
HA_ETCD_PORT=${HA_ETCD_PORT:-2441}
HA_STATS_PORT=${HA_STATS_PORT:-8440}
HA_TTL=${HA_TTL:-10}
HA_LOOP_WAIT=${HA_LOOP_WAIT:-2}
HA_RETRY_TIMEOUT=${HA_RETRY_TIMEOUT:-4}
# pg_rewind lets a lost leader rejoin as a standby without a new base backup; with it on, Patroni
# runs crash recovery in single-user mode before restarting a crashed primary in place (slower).
# Off: a diverged old leader is cloned again instead. Read at bootstrap only (destroy, start).
HA_USE_PG_REWIND=${HA_USE_PG_REWIND:-true}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/15/bin 2>/dev/null || dirname "$(command -v initdb)")}
NODES=(node1 node2)
SCOPE=snapshotd-ha

say() { printf 'ha: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# The prefix that runs a command as the postgres user when we are root (PostgreSQL will not
# run as root). setpriv execs in place (runuser would stay as a parent), so a pid file names
# the program itself.
AS_PG=()
if [ "$(id -u)" -eq 0 ]; then
  AS_PG=(env "HOME=$STATE" setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

# Starts a command in a session of its own, in the background, its pid in the file $1.
spawn() {
  local pidfile=$1
  shift
  # shellcheck disable=SC2016 # $$ and "$@" are the inner shell's
  setsid bash -c 'echo $$ > "$1"; shift; exec "$@"' _ "$pidfile" "$@" &
}

node_index() { echo "${1#node}"; }
pg_port() { echo $((HA_PG_PORT + $(node_index "$1") - 1)); }
rest_port() { echo $((HA_REST_PORT + $(node_index "$1") - 1)); }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

need() {
  for program in patroni etcd haproxy; do
    command -v "$program" >/dev/null 2>&1 ||
      die "$program is missing: apt-get install -y patroni etcd-server haproxy"
  done
  [ -x "$PG_BIN/postgres" ] || die "no PostgreSQL binaries at $PG_BIN: apt-get install -y postgresql-15 (or set PG_BIN)"
}

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local seconds=$1
  shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

start_etcd() {
  alive "$STATE/etcd.pid" && return
  mkdir -p "$STATE/etcd"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$STATE/etcd" && chmod 700 "$STATE/etcd"
  say "starting etcd on 127.0.0.1:$HA_ETCD_PORT"
  # Heartbeat and election at their defaults (100 ms, 1 s): a one-member cluster has no peers
  # to wait for, so leases (Patroni's leader key) are kept to the second.
  spawn "$STATE/etcd.pid" "${AS_PG[@]}" etcd --name ha0 --data-dir "$STATE/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$HA_ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$HA_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((HA_ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((HA_ETCD_PORT + 1))" \
    --initial-cluster "ha0=http://127.0.0.1:$((HA_ETCD_PORT + 1))" \
    --initial-cluster-state new >"$STATE/etcd/etcd.log" 2>&1 </dev/null
  wait_for 30 curl -fsS "http://127.0.0.1:$HA_ETCD_PORT/health" ||
    die "etcd did not come up: see $STATE/etcd/etcd.log"
}

write_patroni_config() {
  local node=$1 dir="$STATE/$1"
  cat >"$dir/patroni.yml" <<EOF
scope: $SCOPE
name: $node
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$(rest_port "$node")
  connect_address: 127.0.0.1:$(rest_port "$node")
etcd3:
  hosts: 127.0.0.1:$HA_ETCD_PORT
bootstrap:
  dcs:
    ttl: $HA_TTL
    loop_wait: $HA_LOOP_WAIT
    retry_timeout: $HA_RETRY_TIMEOUT
    # A standby more than 1 MiB behind is not promoted (with synchronous_mode the sync standby
    # has every acknowledged commit anyway).
    maximum_lag_on_failover: 1048576
    # Commits wait for the synchronous standby; Patroni names it in synchronous_standby_names
    # and promotes only it. Not strict: when the standby is gone, the primary goes on alone
    # rather than stopping every write.
    synchronous_mode: true
    synchronous_mode_strict: false
    postgresql:
      use_pg_rewind: $HA_USE_PG_REWIND
      remove_data_directory_on_diverged_timelines: true
      use_slots: true
      parameters:
        max_connections: 200
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        synchronous_commit: "on"
  initdb:
    - encoding: UTF8
    - data-checksums
    - auth: trust
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$(pg_port "$node")
  connect_address: 127.0.0.1:$(pg_port "$node")
  data_dir: $dir/data
  bin_dir: $PG_BIN
  pgpass: $dir/pgpass
  authentication:
    superuser:
      username: postgres
      password: postgres
    replication:
      username: replicator
      password: replicator
    rewind:
      username: postgres
      password: postgres
  parameters:
    unix_socket_directories: $dir
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
EOF
}

start_node() {
  local node=$1 dir="$STATE/$1"
  alive "$dir/patroni.pid" && return
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  write_patroni_config "$node"
  say "starting $node (PostgreSQL 127.0.0.1:$(pg_port "$node"), Patroni REST 127.0.0.1:$(rest_port "$node"))"
  spawn "$dir/patroni.pid" "${AS_PG[@]}" patroni "$dir/patroni.yml" >>"$dir/patroni.log" 2>&1 </dev/null
  wait_for 30 test -s "$dir/patroni.pid" || die "$node did not start"
}

role() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(rest_port "$1")/$2" 2>/dev/null || true; }
is_primary() { [ "$(role "$1" primary)" = 200 ]; }
is_replica() { [ "$(role "$1" replica)" = 200 ]; }

leader() {
  for node in "${NODES[@]}"; do
    if is_primary "$node"; then
      echo "$node"
      return 0
    fi
  done
  return 1
}

write_haproxy_config() {
  local servers=""
  for node in "${NODES[@]}"; do
    servers+="    server $node 127.0.0.1:$(pg_port "$node") check port $(rest_port "$node")"$'\n'
  done
  cat >"$STATE/haproxy.cfg" <<EOF
global
    maxconn 1000
    log stdout format raw local0 notice

defaults
    mode tcp
    log global
    option tcplog
    retries 2
    timeout connect 1s
    # Pooled PostgreSQL connections sit idle between calls: keep them for 30 min.
    timeout client 30m
    timeout server 30m
    timeout check 1s

listen stats
    mode http
    bind 127.0.0.1:$HA_STATS_PORT
    stats enable
    stats uri /

listen postgres
    bind 127.0.0.1:$HA_PORT
    option httpchk
    http-check send meth GET uri /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
$servers
EOF
}

start_haproxy() {
  alive "$STATE/haproxy.pid" && return
  write_haproxy_config
  haproxy -c -q -f "$STATE/haproxy.cfg" || die "bad HAProxy configuration: $STATE/haproxy.cfg"
  say "starting HAProxy on 127.0.0.1:$HA_PORT (stats http://127.0.0.1:$HA_STATS_PORT/)"
  spawn "$STATE/haproxy.pid" haproxy -db -f "$STATE/haproxy.cfg" >>"$STATE/haproxy.log" 2>&1 </dev/null
  wait_for 10 test -s "$STATE/haproxy.pid" || die "HAProxy did not start"
}

psql_via_haproxy() {
  "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$HA_PORT" -U postgres -d postgres -tA "$@"
}

start() {
  need
  mkdir -p "$STATE"
  chmod 755 "$STATE"
  start_etcd
  if [ -d "$STATE/node2/data" ]; then
    # A cluster that ran before: both nodes at once, and Patroni elects whichever is ahead (after
    # the node drill that is node2, which node1 waits for).
    start_node node1
    start_node node2
    wait_for 90 leader || die "no leader after 90 s: see $STATE/node*/patroni.log"
  else
    # node1 first: it bootstraps the cluster (initdb); node2 then clones it (pg_basebackup).
    start_node node1
    if ! leader >/dev/null; then
      wait_for 90 leader || die "no leader after 90 s: see $STATE/node1/patroni.log"
    fi
    start_node node2
  fi
  start_haproxy
  wait_for 60 psql_via_haproxy -c 'select 1' || die "no PostgreSQL through HAProxy: see $STATE/haproxy.log"
  # Wait for the standby to stream and be the synchronous one, so the first commits are
  # already on two nodes.
  if ! wait_for 90 sync_standby_ready; then
    die "no synchronous standby after 90 s: see $STATE/node*/patroni.log"
  fi
  say "ready: leader $(leader), postgres://postgres@127.0.0.1:$HA_PORT/postgres"
}

sync_standby_ready() {
  [ "$(psql_via_haproxy -c "select count(*) from pg_stat_replication where sync_state = 'sync'")" = 1 ]
}

stop_pidfile() {
  local pidfile=$1 name=$2
  if alive "$pidfile"; then
    say "stopping $name"
    kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 1 100); do
      alive "$pidfile" || break
      sleep 0.2
    done
    if alive "$pidfile"; then
      kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

stop() {
  stop_pidfile "$STATE/haproxy.pid" HAProxy
  # The standby first, so the primary does not wait for it on its last commits.
  local first second
  first=node2 second=node1
  if [ "$(leader 2>/dev/null || true)" = node2 ]; then first=node1 second=node2; fi
  for node in $first $second; do
    stop_pidfile "$STATE/$node/patroni.pid" "$node (Patroni stops its PostgreSQL)"
    # A postmaster left behind (its Patroni was killed): stop it too.
    if [ -f "$STATE/$node/data/postmaster.pid" ]; then
      "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$STATE/$node/data" stop -m fast >/dev/null 2>&1 || true
    fi
  done
  stop_pidfile "$STATE/etcd.pid" etcd
}

status() {
  printf '%-6s %-8s %-22s %-12s %s\n' member role postgres patroni-pid lag
  for node in "${NODES[@]}"; do
    local json role_name="down" lag="-" pid="-"
    json=$(curl -s "http://127.0.0.1:$(rest_port "$node")/patroni" 2>/dev/null || true)
    if [ -n "$json" ]; then
      role_name=$(printf '%s' "$json" | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("role","?")+"/"+d.get("state","?"))')
      lag=$(printf '%s' "$json" | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); r=d.get("replication") or []; print(",".join(x.get("application_name","")+":"+x.get("sync_state","") for x in r) or "-")')
    fi
    alive "$STATE/$node/patroni.pid" && pid=$(cat "$STATE/$node/patroni.pid")
    printf '%-6s %-16s 127.0.0.1:%-12s %-12s %s\n' "$node" "$role_name" "$(pg_port "$node")" "$pid" "$lag"
  done
  if alive "$STATE/haproxy.pid"; then
    echo "haproxy: 127.0.0.1:$HA_PORT, backends:"
    curl -s "http://127.0.0.1:$HA_STATS_PORT/;csv" | awk -F, '$1=="postgres" && $2!="FRONTEND" && $2!="BACKEND" {print "  " $2 " " $18}'
  else
    echo "haproxy: down"
  fi
  if alive "$STATE/etcd.pid"; then echo "etcd: 127.0.0.1:$HA_ETCD_PORT up"; else echo "etcd: down"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  leader) leader ;;
  destroy)
    stop
    rm -rf "$STATE"
    ;;
  *)
    echo "usage: $0 start|stop|status|leader|destroy" >&2
    exit 2
    ;;
esac
