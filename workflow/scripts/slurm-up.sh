#!/usr/bin/env bash
# slurm-up.sh -- start a real single-node SLURM (munged + slurmctld + slurmd) for tests/CI.
#
# Debian 12 (slurm-wlm 22.05), root, no systemd needed. No accounting database:
# `sacct` does NOT work on this cluster, so the Snakemake SLURM profile must use
# `slurm-status-command: squeue` (workflow/profiles/slurm/config.yaml does).
#
# Usage:  sudo workflow/scripts/slurm-up.sh        # stop with workflow/scripts/slurm-down.sh
#
# Environment:
#   SPLITNET_SLURM_STATE    state dir (PID files, logs, spool); default /run/splitnet-slurm
#   SPLITNET_SLURM_TIMEOUT  seconds to wait for the node to become idle; default 60
#
# Exit status: 0 up (or already up and idle), 1 failed to start (log tails printed,
# whatever this run started is stopped again), 2 not root / not usable here,
# 3 the Debian packages are missing and could not be installed.
#
# Idempotent: if the daemons recorded in the state dir are still running and the node
# is idle (or running jobs), it prints the status line and exits 0 without touching them.
# It writes /etc/slurm/slurm.conf (an existing file not written by this script is
# backed up once to /etc/slurm/slurm.conf.splitnet-bak) and refuses to run when a
# slurmctld/slurmd that it did not start is running.
set -euo pipefail

STATE="${SPLITNET_SLURM_STATE:-/run/splitnet-slurm}"
TIMEOUT="${SPLITNET_SLURM_TIMEOUT:-60}"
PARTITION=debug
CONF=/etc/slurm/slurm.conf
MARKER="# written by splitnet workflow/scripts/slurm-up.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE="$(hostname -s)"

say() { echo "slurm-up: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    say "must run as root (starts munged/slurmctld/slurmd and writes $CONF)"
    exit 2
fi

# ---------------------------------------------------------------- helpers
source "$(dirname "${BASH_SOURCE[0]}")/slurm-lib.sh"

node_state() { sinfo -h -n "$NODE" -p "$PARTITION" -o %t 2>/dev/null | head -1 | tr -d '*~#!%$@^-' || true; }

status_line() {
    local cpus mem
    read -r cpus mem < <(sinfo -h -n "$NODE" -p "$PARTITION" -o '%c %m' 2>/dev/null | head -1)
    echo "slurm up: partition $PARTITION, node $NODE $(node_state) (${cpus:-?} cpus, ${mem:-?} MB)$*"
}

show_logs() {
    local f
    for f in "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" /var/log/munge/munged.log; do
        [ -f "$f" ] || continue
        echo "----- tail $f" >&2
        tail -n 25 "$f" >&2 || true
    done
}

# wait_pidfile NAME FILE -> waits (bounded) for a daemon's own PID file, copies it to $STATE
wait_pidfile() {
    local name="$1" file="$2" p i
    for i in $(seq 100); do
        if [ -s "$file" ]; then
            p="$(tr -dc 0-9 <"$file")"
            if [ -n "$p" ] && [ "$(ps -o comm= -p "$p" 2>/dev/null || true)" = "$name" ]; then
                [ "$file" = "$STATE/$name.pid" ] || echo "$p" >"$STATE/$name.pid"
                return 0
            fi
        fi
        sleep 0.1
    done
    say "$name did not come up (no live PID in $file)"
    return 1
}

fail() {
    say "$*"
    show_logs
    say "stopping what this run started"
    "$HERE/slurm-down.sh" >&2 || true
    exit 1
}

# ---------------------------------------------------------------- already up?
if pid_of slurmctld >/dev/null && pid_of slurmd >/dev/null; then
    st="$(node_state)"
    case "$st" in
        idle|mix|alloc)
            status_line " (already running)"
            exit 0
            ;;
    esac
    # ours, but not (yet) usable: give it the usual bound, e.g. slurmd re-registering
    for _ in $(seq $((TIMEOUT * 5))); do
        case "$(node_state)" in idle|mix|alloc) status_line " (already running)"; exit 0 ;; esac
        sleep 0.2
    done
    say "our slurmctld/slurmd are running but node $NODE is '$(node_state)'; run slurm-down.sh and retry"
    show_logs
    exit 1
fi
# partially up (e.g. only munged or only slurmctld left over): stop our leftovers first
if [ -d "$STATE" ]; then
    "$HERE/slurm-down.sh" >/dev/null 2>&1 || true
fi

# refuse to clobber a SLURM we did not start
for d in slurmctld slurmd; do
    if ps -C "$d" -o pid= >/dev/null 2>&1; then
        say "a $d not started by this script is running (pid $(ps -C "$d" -o pid= | tr -s ' \n' ' ')); refusing"
        exit 2
    fi
done

# ---------------------------------------------------------------- packages
need_pkgs() {
    local b
    for b in /usr/sbin/munged /usr/bin/munge /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sinfo /usr/bin/sbatch /usr/bin/squeue; do
        [ -x "$b" ] || return 0
    done
    return 1
}
if need_pkgs; then
    if ! command -v apt-get >/dev/null; then
        say "slurm-wlm/munge are not installed and there is no apt-get"
        exit 3
    fi
    say "installing slurm-wlm munge"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq slurm-wlm munge >"/tmp/splitnet-slurm-apt.log" 2>&1; then
        say "apt-get install failed; running apt-get update and retrying"
        if ! { apt-get update -qq && apt-get install -y -qq slurm-wlm munge; } >>"/tmp/splitnet-slurm-apt.log" 2>&1; then
            tail -n 20 /tmp/splitnet-slurm-apt.log >&2 || true
            say "could not install slurm-wlm munge (log: /tmp/splitnet-slurm-apt.log)"
            exit 3
        fi
    fi
    need_pkgs && { say "packages installed but binaries still missing"; exit 3; }
fi

# ---------------------------------------------------------------- state dir
install -d -m 755 "$STATE"
install -d -o slurm -g slurm -m 755 "$STATE/log" "$STATE/ctld"
install -d -m 755 "$STATE/slurmd"
rm -f "$STATE"/slurmctld.pid "$STATE"/slurmd.pid "$STATE"/munged.pid

# ---------------------------------------------------------------- munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 600 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "reusing the munged that is already running (not started here, will not be stopped)"
else
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || fail "munged failed to start"
    wait_pidfile munged /run/munge/munged.pid || fail "munged failed to start"
    munge -n | unmunge >/dev/null || fail "munge credential round trip failed"
fi

# ---------------------------------------------------------------- slurm.conf
# Topology exactly as slurmd detects it (a mismatch drains the node); memory 3/4 of
# the smaller of MemTotal and the cgroup limit (RealMemory above the real value drains it).
hw="$(slurmd -C 2>/dev/null | head -1)"
get() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
CPUS="$(get CPUs)"; CPUS="${CPUS:-$(nproc)}"
TOPO=""
if [ -n "$(get CoresPerSocket)" ]; then
    TOPO="Boards=$(get Boards) SocketsPerBoard=$(get SocketsPerBoard) CoresPerSocket=$(get CoresPerSocket) ThreadsPerCore=$(get ThreadsPerCore)"
fi
MEM_MB=$(awk '/^MemTotal:/{print int($2/1024)}' /proc/meminfo)
if [ -r /sys/fs/cgroup/memory.max ]; then
    lim="$(cat /sys/fs/cgroup/memory.max)"
    if [ "$lim" != max ] && [ "$((lim / 1048576))" -lt "$MEM_MB" ]; then MEM_MB=$((lim / 1048576)); fi
fi
REAL_MB=$((MEM_MB * 3 / 4))
DEF_MEM_PER_CPU=$((REAL_MB / CPUS < 1000 ? REAL_MB / CPUS : 1000))

if [ -f "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARKER" && [ ! -e "$CONF.splitnet-bak" ]; then
    cp -p "$CONF" "$CONF.splitnet-bak"
    say "backed up existing $CONF to $CONF.splitnet-bak"
fi
install -d -m 755 /etc/slurm
cat >"$CONF" <<CONF
$MARKER
# single-node test cluster: no accounting (sacct does not work; use squeue), no cgroups
ClusterName=splitnet
SlurmctldHost=${NODE}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
ReturnToService=2
# squeue must still list finished jobs when Snakemake polls (plugin: MinJobAge >= 3 x init seconds)
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS $TOPO RealMemory=$REAL_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
chmod 644 "$CONF"

# ---------------------------------------------------------------- daemons
# slurmctld before slurmd, so that slurmd registers at once
/usr/sbin/slurmctld || fail "slurmctld failed to start"
wait_pidfile slurmctld "$STATE/slurmctld.pid" || fail "slurmctld failed to start"
/usr/sbin/slurmd || fail "slurmd failed to start"
wait_pidfile slurmd "$STATE/slurmd.pid" || fail "slurmd failed to start"

for _ in $(seq $((TIMEOUT * 5))); do
    if [ "$(node_state)" = idle ]; then
        status_line
        exit 0
    fi
    pid_of slurmctld >/dev/null || fail "slurmctld exited"
    pid_of slurmd >/dev/null || fail "slurmd exited"
    sleep 0.2
done
sinfo -N -l >&2 || true
scontrol show node "$NODE" 2>/dev/null | grep -E 'State|Reason' >&2 || true
fail "node $NODE not idle after ${TIMEOUT}s (state '$(node_state)')"
