#!/bin/bash
# SPDX-License-Identifier: MIT
# bench/watch.sh [N] [SIZE]: the DIMSE route's sustained rate and the watcher's memory.
# Run inside the test bed: spec/support/testbed bench/watch.sh 10000 2048
#   direct:  storescu -> Orthanc's own DICOM port (C-STORE), a fresh Orthanc
#   watch:   storescu -> storescp -> spool -> healthcare watch -> Orthanc (STOW-RS), a fresh Orthanc
# Each rate is N instances over the time from storescu's start until Orthanc holds all N. The
# watcher's peak RSS (GNU time) is printed for N and for N/10, to show it does not grow with N.
# Results: bench/README.md "The DIMSE route". Writes nothing outside a temporary folder.
set -eu
N=${1:-10000}
SIZE=${2:-2048}
here=$(cd "$(dirname "$0")/.." && pwd)
HC=${HC_BUILD_DIR:-$here/build}/bin/healthcare
PY=/usr/bin/python3
tmp=$(mktemp -d "${HC_TEST_TMP:-/tmp}/bench-watch.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$tmp"; }
trap cleanup EXIT
export TCP_NODELAY=1   # Debian's dcmtk leaves Nagle's algorithm on (about 90 ms per instance)

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
count() { curl -s "$1/statistics" | $PY -c 'import json,sys; print(json.load(sys.stdin)["CountInstances"])'; }
now() { date +%s.%N; }

# start_orthanc DIR DICOM_PORT -> sets URL
start_orthanc() {
    mkdir -p "$1"
    $PY "$here/spec/support/orthanc.py" --workdir "$1" --extra-config \
        "{\"DicomServerEnabled\": true, \"DicomPort\": $2, \"DicomAet\": \"ORTHANC\"}" > "$1/out" 2>"$1/err" &
    pids+=($!)
    for _ in $(seq 300); do URL=$(head -1 "$1/out" 2>/dev/null || true); [ -n "$URL" ] && return; sleep 0.1; done
    echo "Orthanc did not start" >&2; cat "$1/err" >&2; exit 1
}

wait_count() { # URL N
    while [ "$(count "$1")" -lt "$2" ]; do sleep 0.1; done
}

echo "generating $N instances of $SIZE bytes of pixel data"
$PY "$here/spec/support/gen_dicom.py" -o "$tmp/src" --count "$N" --size "$SIZE" > /dev/null
small=$(( N / 10 ))

# --- direct: storescu to Orthanc's own C-STORE port
p=$(free_port); start_orthanc "$tmp/o1" "$p"
t0=$(now)
find "$tmp/src" -name '*.dcm' -print0 | xargs -0 storescu -aec ORTHANC 127.0.0.1 "$p"
wait_count "$URL" "$N"
t1=$(now)
direct=$(echo "$N / ($t1 - $t0)" | bc -l)
printf 'direct  storescu -> Orthanc C-STORE:               %d instances in %.1f s: %.0f instances/s\n' \
    "$N" "$(echo "$t1 - $t0" | bc -l)" "$direct"

# --- watch: storescu -> storescp -> spool -> healthcare watch -> Orthanc STOW-RS
# run_watch LABEL CHUNK FILES...: storescu sends CHUNK files at a time and waits until Orthanc
# holds them before the next (CHUNK = all: one burst, the spool's backlog as large as it gets).
run_watch() {
    local label=$1 chunk=$2; shift 2
    start_orthanc "$tmp/o-$label" "$(free_port)"
    local spool="$tmp/spool-$label"; mkdir -p "$spool"
    local sp; sp=$(free_port)
    storescp -dhl -od "$spool" "$sp" 2>/dev/null & pids+=($!)
    /usr/bin/time -f '%M' -o "$tmp/rss-$label" "$HC" watch "$URL/dicom-web" "$spool" --status-interval 3600 \
        2> "$tmp/watch-$label.err" & local w=$!; pids+=($w)
    sleep 1
    local files=("$@") n=$# i=0
    t0=$(now)
    while [ "$i" -lt "$n" ]; do
        printf '%s\0' "${files[@]:$i:$chunk}" | xargs -0 storescu -aec STORESCP 127.0.0.1 "$sp"
        i=$((i + chunk))
        [ "$i" -lt "$n" ] && wait_count "$URL" "$i"
    done
    wait_count "$URL" "$n"
    t1=$(now)
    # /usr/bin/time's child is the watcher: SIGTERM to it, then time writes the peak RSS
    pkill -TERM -P "$w" || true; wait "$w" || true
    printf '%-7s storescu -> storescp -> watch -> Orthanc: %d instances in %.1f s: %.0f instances/s; watcher peak RSS %s KB\n' \
        "$label" "$n" "$(echo "$t1 - $t0" | bc -l)" "$(echo "$n / ($t1 - $t0)" | bc -l)" "$(tail -1 "$tmp/rss-$label")"
}
mapfile -d '' all < <(find "$tmp/src" -name '*.dcm' -print0)
run_watch burst-n10 "$small" "${all[@]:0:$small}"
run_watch burst "$N" "${all[@]}"
# paced: at most 500 files waiting in the spool, so what grows with N is not the backlog
run_watch paced-n10 500 "${all[@]:0:$small}"
run_watch paced 500 "${all[@]}"
