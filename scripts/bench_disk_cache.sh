#!/bin/bash
# Cold reads of a random model from 3 local storage nodes (replicas=2) through a fresh mount each
# time, dd bs=4M: without a disk cache, with an empty one (every shard is written), from the filled
# one after a remount; then `modelfs warmup` into an empty one. Usage: bash scripts/bench_disk_cache.sh [MiB] [rounds]
set -euo pipefail
MIB=${1:-256}
ROUNDS=${2:-3}
PY=$(command -v "${PYTHON:-python3}")
M="$PY -m modelfs.tools.cli"
WORK=$(mktemp -d /tmp/modelfs-bench-disk-cache.XXXXXX)
PIDS=()
cleanup() {
  fusermount3 -u "$WORK/mnt" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK" && mkdir mnt
head -c $((MIB << 20)) /dev/urandom > model.bin
head -c 24 /dev/urandom | base64 > token && chmod 600 token
for i in 0 1 2; do
  $M serve --data "n$i" --listen 127.0.0.1:0 --token-file token > "n$i.out" 2> "n$i.err" & PIDS+=($!)
done
for i in 0 1 2; do
  until grep -q "listening on" "n$i.out"; do
    kill -0 "${PIDS[$i]}" 2>/dev/null || { cat "n$i.err"; exit 1; }
    sleep 0.1
  done
done
HOSTS=$(for i in 0 1 2; do sed -n 's#.*http://\(127.0.0.1:[0-9]*\).*#\1#p' "n$i.out"; done | paste -sd,)
URL="http://$HOSTS/?replicas=2&token_file=$WORK/token"
$M push model.bin m --store "$URL" --key-file key 2>/dev/null
read_once() {
  $M mount "$URL" mnt --key-file key --cache-size 256MiB "$@" > /dev/null
  dd if=mnt/m of=/dev/null bs=4M 2>&1 | tail -1 | sed 's/.*, //'
  $M umount mnt
}
for round in $(seq "$ROUNDS"); do
  rm -rf dc
  echo "round $round  nodes only            $(read_once)"
  echo "round $round  nodes + empty disk    $(read_once --disk-cache dc)"
  echo "round $round  filled disk, remount  $(read_once --disk-cache dc)"
  rm -rf dc
  $M mount "$URL" mnt --key-file key --cache-size 256MiB --disk-cache dc > /dev/null
  echo "round $round  warmup                $($M warmup mnt 2>/dev/null | head -1)"
  $M umount mnt
done
