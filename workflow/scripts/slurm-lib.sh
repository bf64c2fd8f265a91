# Shared by slurm-up.sh and slurm-down.sh (sourced; needs $STATE).
# pid_of NAME -> prints the PID recorded in $STATE/NAME.pid if that process is alive
# and really is NAME (PID files go stale; never trust a bare number).
pid_of() {
    local f="$STATE/$1.pid" p
    [ -s "$f" ] || return 1
    p="$(tr -dc 0-9 <"$f")"
    [ -n "$p" ] || return 1
    [ "$(ps -o comm= -p "$p" 2>/dev/null || true)" = "$1" ] || return 1
    echo "$p"
}
