#!/usr/bin/env bash
# A daonet service on a Ray cluster of plain machines (same Python 3.11 and `pip install 'daonet[ray]'` on each).
#
#   scripts/ray-cluster.sh head                      # on the head machine: starts Ray's head node
#   scripts/ray-cluster.sh worker HEAD_IP            # on every other machine: joins the head
#   scripts/ray-cluster.sh serve BUNDLE... [daonet serve options]   # on the head: deploys daonet, keeps it up
#   scripts/ray-cluster.sh stop                      # on any machine: leaves the cluster
#
# Ray's ports (6379 GCS, 8265 dashboard, 10001 client, worker ports) must be reachable between the machines and
# from nowhere else. Clients reach daonet on port 8000 of every node (one Ray proxy per node): put a load
# balancer with TLS in front. Environment: RAY_PORT (6379), METRICS_PORT (8090, Prometheus), DAONET (daonet
# executable), CPUS (Ray CPUs per node).
set -euo pipefail
RAY_PORT=${RAY_PORT:-6379}
DAONET=${DAONET:-daonet}
cpus=()
if [[ -n "${CPUS:-}" ]]; then cpus=(--num-cpus "$CPUS"); fi

case "${1:-}" in
  head)
    ray start --head --port "$RAY_PORT" --dashboard-host 127.0.0.1 --metrics-export-port "${METRICS_PORT:-8090}" "${cpus[@]}"
    ;;
  worker)
    [[ -n "${2:-}" ]] || { echo "usage: $0 worker HEAD_IP" >&2; exit 2; }
    ray start --address "$2:$RAY_PORT" --metrics-export-port "${METRICS_PORT:-8090}" "${cpus[@]}"
    ;;
  serve)
    shift
    [[ $# -gt 0 ]] || { echo "usage: $0 serve BUNDLE... [--replicas N --api-key-hash H ...]" >&2; exit 2; }
    exec "$DAONET" serve "$@" --ray --ray-address auto --host 0.0.0.0
    ;;
  stop)
    ray stop
    ;;
  *)
    sed -n '2,12p' "$0"; exit 2
    ;;
esac
