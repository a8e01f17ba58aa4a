#!/bin/sh
# CPU per request of one process under a wrk load: user and system microseconds per
# request, from /proc/PID/stat before and after the run (the figures of "Where the time
# goes" in benchmarks/README.md). 127.0.0.1 only; bounded by the duration. With
# H2_STREAMS=M in the environment the load is h2load over cleartext HTTP/2 (prior
# knowledge), M streams per connection, instead of wrk.
#
#   benchmarks/cpu_per_request.sh PID URL [SECONDS] [CONNECTIONS] [WRK_ARGS...]
#   e.g. benchmarks/cpu_per_request.sh "$(pgrep -f 'fastgw run' | tail -1)" http://127.0.0.1:8080/x 5 50
#        H2_STREAMS=10 benchmarks/cpu_per_request.sh PID http://127.0.0.1:8080/x 5 10
set -eu
[ $# -ge 2 ] || { echo "usage: $0 PID URL [SECONDS] [CONNECTIONS] [WRK_ARGS...]" >&2; exit 2; }
pid=$1 url=$2 seconds=${3:-5} conns=${4:-50}
shift 2; [ $# -gt 0 ] && shift; [ $# -gt 0 ] && shift
case $url in http://127.0.0.1:*) ;; *) echo "$0: 127.0.0.1 only" >&2; exit 2 ;; esac
ticks=$(getconf CLK_TCK)
if [ -n "${H2_STREAMS:-}" ]; then
    command -v h2load >/dev/null || { echo "$0: needs h2load (apt-get install nghttp2-client)" >&2; exit 2; }
    before=$(awk '{print $14, $15}' "/proc/$pid/stat")
    rps=$(h2load -t1 -c"$conns" -m"$H2_STREAMS" -D"$seconds" "$@" "$url" | awk '/finished in/ {print $4}')
else
    command -v wrk >/dev/null || { echo "$0: needs wrk (apt-get install wrk)" >&2; exit 2; }
    before=$(awk '{print $14, $15}' "/proc/$pid/stat")
    rps=$(wrk -t1 -c"$conns" -d"${seconds}s" "$@" "$url" | awk '/Requests\/sec/ {print $2}')
fi
after=$(awk '{print $14, $15}' "/proc/$pid/stat")
echo "$before $after $rps $seconds $ticks" | awk '{
    n = $5 * $6; us = 1e6 / $7
    printf "%.0f req/s  user %.1f us  system %.1f us per request\n", $5, ($3 - $1) * us / n, ($4 - $2) * us / n }'
