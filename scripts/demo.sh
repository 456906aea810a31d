#!/usr/bin/env bash
# canaryd demo: a full local canary loop on loopback.
#
# Installs what is missing (Prometheus and HAProxy from Debian), builds canaryd, starts two
# releases' worth of the test app behind a real HAProxy, a real Prometheus scraping them, a load
# generator and the canaryd daemon, then runs
#   1. a healthy release (v1 -> v2): promoted step by step;
#   2. a faulty release (v2 -> v3, 2.5x latency and 10% errors): rolled back with reasons.
# Everything binds 127.0.0.1 and is stopped when the script exits. Logs stay in demo-run/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN="$ROOT/demo-run"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

install_packages() {
  local missing=()
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v haproxy >/dev/null || missing+=(haproxy)
  if [ ${#missing[@]} -gt 0 ]; then
    say "Installing ${missing[*]} from Debian"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url what
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: $2 did not come up ($1); see $RUN/*.log" >&2
  exit 1
}

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

install_packages
say "Building canaryd"
cargo build --quiet --bins
BIN="$ROOT/target/debug"

rm -rf "$RUN" && mkdir -p "$RUN/rules" "$RUN/prometheus"
cp "$ROOT/rules/http-service.yaml" "$RUN/rules/"

P_V1=$(free_port); P_V2=$(free_port); P_V3=$(free_port)
P_FE=$(free_port); P_API=$(free_port); P_STATS=$(free_port); P_PROM=$(free_port); P_CANARYD=$(free_port)

say "Starting three versions of the service (the project's test app)"
# v3 carries the fault: 2.5x latency and 10% errors. 1 ms of CPU per request makes CPU visible.
"$BIN/canaryd-testapp" serve --listen 127.0.0.1:$P_V1 --name v1 --cpu-burn-us 1000 >"$RUN/v1.log" 2>&1 & PIDS+=($!)
"$BIN/canaryd-testapp" serve --listen 127.0.0.1:$P_V2 --name v2 --cpu-burn-us 1000 >"$RUN/v2.log" 2>&1 & PIDS+=($!)
"$BIN/canaryd-testapp" serve --listen 127.0.0.1:$P_V3 --name v3 --cpu-burn-us 1000 \
  --latency-multiplier 2.5 --error-rate 0.1 >"$RUN/v3.log" 2>&1 & PIDS+=($!)
for p in $P_V1 $P_V2 $P_V3; do wait_http "http://127.0.0.1:$p/health" "test app on $p"; done

say "Starting HAProxy (v1 serves all traffic; v2 and v3 are deployed with weight 0)"
cat >"$RUN/haproxy.cfg" <<CFG
global
    stats socket ipv4@127.0.0.1:$P_API level admin
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe_checkout
    bind 127.0.0.1:$P_FE
    default_backend be_checkout
backend be_checkout
    balance roundrobin
    option httpchk GET /health
    server checkout-v1 127.0.0.1:$P_V1 weight 100 check inter 1s
    server checkout-v2 127.0.0.1:$P_V2 weight 0 check inter 1s
    server checkout-v3 127.0.0.1:$P_V3 weight 0 check inter 1s
frontend fe_stats
    bind 127.0.0.1:$P_STATS
    http-request use-service prometheus-exporter if { path /metrics }
CFG
haproxy -f "$RUN/haproxy.cfg" -db >"$RUN/haproxy.log" 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$P_STATS/metrics" "HAProxy"

say "Starting Prometheus (scraping every second) and a load generator (50 requests/s)"
cat >"$RUN/prometheus.yml" <<CFG
global: {scrape_interval: 1s, scrape_timeout: 1s}
scrape_configs:
  - job_name: checkout
    static_configs:
      - {targets: ['127.0.0.1:$P_V1'], labels: {service: checkout, version: v1}}
      - {targets: ['127.0.0.1:$P_V2'], labels: {service: checkout, version: v2}}
      - {targets: ['127.0.0.1:$P_V3'], labels: {service: checkout, version: v3}}
CFG
prometheus --config.file="$RUN/prometheus.yml" --storage.tsdb.path="$RUN/prometheus" \
  --web.listen-address=127.0.0.1:$P_PROM >"$RUN/prometheus.log" 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$P_PROM/-/ready" "Prometheus"
"$BIN/canaryd-testapp" load --url "http://127.0.0.1:$P_FE/" --rps 50 >"$RUN/load.log" 2>&1 & PIDS+=($!)

say "Starting canaryd"
cat >"$RUN/canaryd.toml" <<CFG
[server]
listen = "127.0.0.1:$P_CANARYD"
[store]
url = "sqlite://data/canaryd.db"
[prometheus]
url = "http://127.0.0.1:$P_PROM"
[rules]
dir = "rules"
[routers.edge]
kind = "haproxy"
runtime_api = "127.0.0.1:$P_API"
CFG
(cd "$RUN" && exec "$BIN/canaryd" serve --config canaryd.toml >"$RUN/canaryd.log" 2>&1) & PIDS+=($!)
wait_http "http://127.0.0.1:$P_CANARYD/readyz" "canaryd"
export CANARYD_SERVER="http://127.0.0.1:$P_CANARYD"

# Wait until Prometheus has a few scrapes of the serving version (its first scrape comes a few
# seconds in): preflight checks that every metric has baseline data before traffic moves.
for _ in $(seq 1 300); do
  n=$(curl -fsS "http://127.0.0.1:$P_PROM/api/v1/query" \
      --data-urlencode 'query=count_over_time(http_requests_total{service="checkout",version="v1",code="200"}[1m])' \
      | jq -r '.data.result[0].value[1] // 0')
  [ "$n" -ge 3 ] 2>/dev/null && break
  sleep 0.1
done

release() { # from to
  cat >"$RUN/release-$2.yaml" <<SPEC
service: checkout
environment: staging
router: edge
target: {backend: be_checkout, baseline: [checkout-$1], canary: [checkout-$2]}
labels: {service: checkout}
baseline_labels: {version: $1}
canary_labels: {version: $2}
rules: http-service
strategy: {steps: [10, 25, 50, 100], interval: 5s, max_duration: 40s}
metadata: {commit: demo-$2, author: demo}
SPEC
  set +e
  "$BIN/canaryd" submit "$RUN/release-$2.yaml" --wait
  local code=$?
  set -e
  echo "(canaryd submit --wait exited with $code)"
  return 0
}

say "Release 1: v1 -> v2 (healthy)"
release v1 v2

say "Release 2: v2 -> v3 (2.5x latency, 10% errors)"
release v2 v3

say "Outcomes"
"$BIN/canaryd" status
echo
runtime() { exec 3<>"/dev/tcp/127.0.0.1/$P_API"; echo "$1" >&3; head -1 <&3; exec 3<&-; }
echo "HAProxy weights now (from its Runtime API):"
for v in v1 v2 v3; do echo "  checkout-$v: $(runtime "get weight be_checkout/checkout-$v")"; done
