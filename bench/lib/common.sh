# shellcheck shell=bash
# Helpers shared by bench/run.sh (sourced). Same measuring approach as bench/forward.sh: CPU time of the process
# under test from /proc/PID/stat (utime+stime, all threads, plus its direct children: nginx = master + worker),
# the busy time of the proxy's CPU from /proc/stat, medians and min–max over repetitions.

log() { printf '[bench] %s\n' "$*" >&2; }

SUDO=()
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO=(sudo)
apt_install() {
    # Install without refreshing the package lists first; refresh only when that fails.
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q "$@" >/dev/null 2>&1 || {
        "${SUDO[@]}" apt-get update -q >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q "$@" >/dev/null
    }
}

CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() {   # utime+stime of a process and its direct children
    local total=0 pid f
    for pid in "$1" $(pgrep -P "$1" || true); do
        f=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat" 2>/dev/null) || continue
        [ -n "$f" ] && total=$((total + f))
    done
    echo $total
}

cpu_busy() {   # busy jiffies of one CPU (all processes), from /proc/stat
    awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

rss_kib() {    # VmRSS of a process plus its direct children (nginx: master + worker), KiB
    local total=0 pid r
    for pid in "$1" $(pgrep -P "$1" || true); do
        r=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
        [ -n "$r" ] && total=$((total + r))
    done
    echo $total
}

tail_word() { local w=($1); echo "${w[-1]}"; }
median() {
    tr ' ' '\n' | grep -v '^-\?$' | sort -g |
        awk '{a[NR] = $1} END {if (!NR) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
minmax() {     # $1 = printf format of each end (default %s)
    tr ' ' '\n' | grep -v '^-\?$' | sort -g |
        awk -v f="${1:-%s}" 'NR == 1 {lo = $1} {hi = $1} END {if (!NR) print "-"; else printf f "–" f, lo, hi}'
}
fmt() { awk -v f="$1" -v x="$2" 'BEGIN {if (x == "-" || x == "") print "-"; else printf f, x}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b}'; }

wait_http() {   # $1 = url[, more curl arguments]; waits until it answers 200 with a 1024-byte body
    local out
    for _ in $(seq 100); do
        out=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$@" 2>/dev/null || true)
        [ "$out" = "200 1024" ] && return 0
        sleep 0.1
    done
    echo "$1 did not answer 200 with 1024 bytes (last: '$out')" >&2
    return 1
}

port_in_use() { ss -ltnH "sport = :$1" | grep -q .; }

# The knobs of the wrk-driven scripts (REPS, DURATION, WARMUP, CONNS, SIZE: from the environment, else these
# defaults) and their arguments: --quick = 1 repetition of 3 s after 1 s of warm-up; -h = the header comment.
wrk_knobs() {
    REPS=${REPS:-5} DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} CONNS=${CONNS:-64} SIZE=${SIZE:-1024}
    local a
    for a in "$@"; do
        [ "$a" = --quick ] && { REPS=1 DURATION=3 WARMUP=1; continue; }
        [ "$a" = -h ] || [ "$a" = --help ] && { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0; }
        echo "unknown argument: $a (use --quick)" >&2; exit 2
    done
}

sluice_toml_head() {   # $1 = port, $2 = admin port: a Sluice config's [server] (127.0.0.1) and [telemetry] (no access log)
    printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n\n[telemetry]\naccess_log = false\n\n' "$1" "$2"
}

warn_contention() {   # $1 = median % other processes used, $2 = of what ("the machine"), $3 = the skewed rate ("msgs/s")
    awk -v b="$1" 'BEGIN {exit !(b > 10)}' || return 0
    printf '\nWARNING: other processes used a median %s%% of %s during the runs: %s are skewed by\n' "$1" "$2" "$3"
    echo "contention; the CPU time per message or request is the steadier comparison."
}
