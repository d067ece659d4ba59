#!/usr/bin/env bash
# A demo cluster in one command: a Rust server with one instance per CPU on port 8000 and a
# Python server with 2 instances on port 8001, sharing their ports through herd. It shows
# them answering, kills one instance to show it being replaced, then stops everything.
#
#   ./examples/demo.sh          # run the demo, then stop it
#   ./examples/demo.sh --keep   # leave the cluster running (stop it with the printed command)
#
# Ports: DEMO_PORT (default 8000) and DEMO_PORT+1. Uses its own HERD_HOME unless you set one.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${DEMO_PORT:-8000}
cargo build --release --quiet -p herd-cli --bin herd --example hello
export HERD_HOME="${HERD_HOME:-$(mktemp -d -t herd-demo-XXXXXX)}"
herd=target/release/herd

fetch() { python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" "$1"; }

echo "== herd start (HERD_HOME=$HERD_HOME)"
$herd start target/release/examples/hello --name hello-rs -i max --listen "127.0.0.1:$port"
$herd start examples/hello.py --name hello-py -i 2 --listen "127.0.0.1:$((port + 1))" --env MODE=demo
echo
echo "== 6 requests to each port: different instances answer"
for _ in 1 2 3 4 5 6; do fetch "http://127.0.0.1:$port/"; done
for _ in 1 2 3 4 5 6; do fetch "http://127.0.0.1:$((port + 1))/"; done
echo
victim=$($herd list --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['processes'][0]['pid'])")
echo "== kill -9 $victim (hello-rs instance 0): herd replaces it, the port keeps answering"
kill -9 "$victim"
for _ in 1 2 3; do fetch "http://127.0.0.1:$port/"; done
sleep 0.2
echo
$herd list
echo
echo "== herd logs hello-rs --lines 2"
$herd logs hello-rs --lines 2
echo
if [ "${1:-}" = "--keep" ]; then
  echo "The cluster keeps running. Stop it with: HERD_HOME=$HERD_HOME $herd kill"
else
  $herd kill
fi
