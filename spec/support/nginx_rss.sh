#!/bin/bash
# SPDX-License-Identifier: MIT
#
# spec/support/nginx_rss.sh MASTER_PID OUT CMD [ARGS...]
#
# Runs CMD and, while it runs, samples the resident memory (VmRSS, kB) of every worker of the
# nginx master MASTER_PID ten times a second, appending "pid kB" lines to OUT. Exits with CMD's
# status. Used to show that a large upload through the gateway leaves nginx's memory flat.
set -u
master=$1 out=$2
shift 2
"$@" &
cmd=$!
sample() {
    for w in $(cat "/proc/$master/task/$master/children" 2>/dev/null); do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$w/status" 2>/dev/null)
        [ -n "$kb" ] && echo "$w $kb" >> "$out"
    done
}
# Until CMD ends (a zombie counts as ended: it is reaped by `wait` below).
running() {
    local st
    st=$(sed -n 's/^[0-9]* (.*) \([A-Z]\) .*/\1/p' "/proc/$cmd/stat" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ]
}
while running; do
    sample
    sleep 0.1
done
wait "$cmd"
rc=$?
sample
exit "$rc"
