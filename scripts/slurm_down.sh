#!/usr/bin/env bash
# slurm_down.sh -- stop the single-node SLURM cluster that scripts/slurm_up.sh started.
#
#   make slurm-down                       # or: bash scripts/slurm_down.sh
#   bash scripts/slurm_down.sh --purge    # also delete the state (job ids restart at 1), logs and database
#
# Cancels the jobs still queued or running, then stops slurmd, slurmctld, slurmdbd, MariaDB and munged,
# each by the PID in its pidfile (never by process name), checking that the PID still belongs to that
# program. MariaDB and munged are stopped only when slurm_up.sh started them (marker files in
# $BIKEBENCH_SLURM_BASE/run), so a system-wide munged or MariaDB is left alone.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}

BASE=${BIKEBENCH_SLURM_BASE:-/var/tmp/bikebench-slurm}
RUN=$BASE/run
PURGE=0
for arg in "$@"; do
    case "$arg" in
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "slurm_down.sh: unknown argument '$arg' (expected --purge)" >&2; exit 2 ;;
    esac
done

log() { printf '[slurm-down %s] %s\n' "$(date +%T)" "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { log "ERROR: needs root (and sudo is not installed)"; exit 1; }
    exec sudo --preserve-env=BIKEBENCH_SLURM_BASE bash "$0" "$@"
fi

stop_pidfiles() {  # "pidfile:program"... ; TERM to all of them, wait up to 30 s, then KILL
    local entry pidfile program pid pids=()
    for entry in "$@"; do
        pidfile=${entry%%:*}; program=${entry##*:}
        [ -s "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pidfile"
            continue
        fi
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$program" ]; then
            log "pid $pid in $pidfile is not $program (stale pidfile); leaving that process alone"
            rm -f "$pidfile"
            continue
        fi
        log "stopping $program (pid $pid)"
        kill -TERM "$pid" 2>/dev/null
        pids+=("$pid")
        rm -f "$pidfile"
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid still running after 30 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
    done
}

# 1. jobs first, so that no job step outlives its slurmd
if [ -s "$RUN/slurmctld.pid" ] && kill -0 "$(cat "$RUN/slurmctld.pid")" 2>/dev/null \
    && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 1 60); do
            [ -z "$(squeue -h -t running,completing -o %A 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

# 2. daemons, consumers before what they depend on
stop_pidfiles "$RUN/slurmd.pid:slurmd" "$RUN/slurmctld.pid:slurmctld"
stop_pidfiles "$RUN/slurmdbd.pid:slurmdbd"
last=()
[ -e "$RUN/started-mariadb" ] && last+=("$BASE/mariadb/mariadbd.pid:mariadbd")
[ -e "$RUN/started-munge" ] && last+=("/run/munge/munged.pid:munged")
[ ${#last[@]} -gt 0 ] && stop_pidfiles "${last[@]}"
rm -f "$RUN/started-mariadb" "$RUN/started-munge"
rm -f "$RUN/config.sha256"

# 3. report what is left (job steps whose slurmd is gone); never kill by name
left=$(ps -eo pid=,comm= | awk '$2 ~ /^(slurmstepd|slurmctld|slurmd|slurmdbd|slurmscriptd)$/ {print $1 "(" $2 ")"}' \
    | tr '\n' ' ')
[ -n "$left" ] && log "still running, not started through a pidfile here (left alone): $left"

if [ "$PURGE" = 1 ]; then
    case "$BASE" in
        /|/var|/var/tmp|/tmp|/root|/home|"") log "ERROR: refusing to remove '$BASE'"; exit 1 ;;
    esac
    log "removing $BASE"
    rm -rf "$BASE"
fi
log "stopped"
exit 0
