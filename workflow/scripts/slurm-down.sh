#!/usr/bin/env bash
# slurm-down.sh -- stop the single-node SLURM started by slurm-up.sh.
#
# Stops exactly the processes whose PIDs slurm-up.sh recorded in the state dir
# (SPLITNET_SLURM_STATE, default /run/splitnet-slurm), in the order slurmd, slurmctld,
# munged, checking each PID still belongs to a process of that name (PID files go
# stale). Never uses pkill/killall. A munged that slurm-up.sh reused rather than
# started has no PID file here and is left alone.
# Jobs still queued/running are cancelled first (bounded wait), so no slurmstepd or
# job process outlives the cluster.
# Idempotent: nothing to stop -> exit 0.
#
# Environment: SPLITNET_SLURM_STATE, SPLITNET_SLURM_STOP_TIMEOUT (per daemon, default 30 s)
set -uo pipefail

STATE="${SPLITNET_SLURM_STATE:-/run/splitnet-slurm}"
STOP_TIMEOUT="${SPLITNET_SLURM_STOP_TIMEOUT:-30}"

say() { echo "slurm-down: $*" >&2; }

[ -d "$STATE" ] || { echo "slurm down: nothing to stop ($STATE absent)"; exit 0; }

source "$(dirname "${BASH_SOURCE[0]}")/slurm-lib.sh"

# cancel leftover jobs while slurmctld and slurmd can still clean them up
if pid_of slurmctld >/dev/null && pid_of slurmd >/dev/null; then
    jobs="$(squeue -h -o %i -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING 2>/dev/null | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 75); do
            [ -z "$(squeue -h -o %i -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

rc=0
stopped=()
stop() {
    local name="$1" p i
    if ! p="$(pid_of "$name")"; then
        rm -f "$STATE/$name.pid"
        return 0
    fi
    kill -TERM "$p" 2>/dev/null || true
    for i in $(seq $((STOP_TIMEOUT * 5))); do
        kill -0 "$p" 2>/dev/null || break
        # a recycled PID would no longer carry the daemon's name
        [ "$(ps -o comm= -p "$p" 2>/dev/null || true)" = "$name" ] || break
        sleep 0.2
    done
    if kill -0 "$p" 2>/dev/null && [ "$(ps -o comm= -p "$p" 2>/dev/null || true)" = "$name" ]; then
        say "$name (pid $p) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$p" 2>/dev/null || true
        for i in $(seq 25); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$p" 2>/dev/null; then say "$name (pid $p) still alive"; rc=1; return; fi
    fi
    rm -f "$STATE/$name.pid"
    stopped+=("$name:$p")
}

stop slurmd
stop slurmctld
stop munged

if [ ${#stopped[@]} -eq 0 ]; then
    echo "slurm down: nothing was running"
else
    echo "slurm down: stopped ${stopped[*]}"
fi
exit $rc
