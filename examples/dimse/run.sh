#!/bin/sh
# The recipe without systemd, in one shell: storescp receives on PORT into SPOOL, healthcare watch
# stores what appears there into STORE. Ctrl-C stops both (the watcher lets requests in flight
# finish). Usage: examples/dimse/run.sh STORE [SPOOL] [PORT]
set -eu
STORE=$1
SPOOL=${2:-./spool}
PORT=${3:-11112}
mkdir -p "$SPOOL"
TCP_NODELAY=1 storescp -dhl -od "$SPOOL" "$PORT" &
scp=$!
trap 'kill "$scp" 2>/dev/null' EXIT INT TERM
healthcare watch "$STORE" "$SPOOL" --status-interval 10
