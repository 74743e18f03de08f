#!/usr/bin/env bash
# A real one-node Slurm cluster (with accounting) on localhost, for tests and CI.
#
#   tools/slurm_local.sh start    install what is missing, start munged, MariaDB, slurmdbd,
#                                 slurmctld and slurmd, wait until the node is idle (~16 s)
#   tools/slurm_local.sh stop     cancel this cluster's jobs, stop the daemons by their pid files
#   tools/slurm_local.sh status   one line per daemon, then sinfo
#
# Needs root (apt-get, /etc/slurm, daemons); re-executes itself through sudo when available.
# Debian 12's Slurm 22.05 runs without systemd or cgroups (proctrack/linuxproc, task/none).
# Accounting (slurmdbd + MariaDB) is required by submitit: without it `sacct` fails and a
# cancelled or timed-out job never reports done.
#
# Environment:
#   SLURM_LOCAL_CLUSTER  cluster name (default: reed)
#   SLURM_LOCAL_CPUS     CPUs the node advertises (default: nproc); more than the real count
#                        lets the node oversubscribe (SlurmdParameters=config_overrides)
#   SLURM_LOCAL_FORCE=1  overwrite an /etc/slurm/slurm.conf this script did not write
set -euo pipefail

CLUSTER=${SLURM_LOCAL_CLUSTER:-reed}
MARKER="# written by tools/slurm_local.sh"
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
MUNGE_PID=/run/munge/munged.pid
MYSQL_PID=/run/mysqld/mysqld.pid
DBD_PID=/run/slurmdbd.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
DB_USER=slurm
DB_PASS=reed-slurm-local
DB_NAME=slurm_acct_db
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

log() { printf '[slurm_local %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf '[slurm_local] error: %s\n' "$*" >&2; exit 1; }

if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "must run as root (no sudo found)"
    exec sudo -E "$0" "$@"
fi

# --- helpers ---------------------------------------------------------------------------------

pid_alive() {  # pid_alive FILE -> 0 if FILE names a live process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${limit}s waiting for $what"
        sleep 0.2
    done
}

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

write_configs() {
    local host cpus real_cpus mem_mb
    host=$(hostname -s)
    real_cpus=$(nproc)
    cpus=${SLURM_LOCAL_CPUS:-$real_cpus}
    [[ $cpus =~ ^[0-9]+$ && $cpus -ge 1 ]] || die "SLURM_LOCAL_CPUS must be a positive integer"
    # Leave 5% to the OS: slurmd refuses a node whose RealMemory exceeds what it measures.
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
    if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf" &&
        [[ ${SLURM_LOCAL_FORCE:-0} != 1 ]]; then
        die "$CONF_DIR/slurm.conf was not written by this script; set SLURM_LOCAL_FORCE=1 to replace it"
    fi
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
    local overrides=""
    ((cpus > real_cpus)) && overrides="SlurmdParameters=config_overrides"
    cat >"$CONF_DIR/slurm.conf" <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmUser=root
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=1,sched_interval=2
KillWait=5
EnforcePartLimits=ALL
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
$overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    (
        umask 077
        cat >"$CONF_DIR/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DBD_PID
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
    )
    chmod 600 "$CONF_DIR/slurmdbd.conf"
}

start_munge() {
    pid_alive $MUNGE_PID && return 0
    log "starting munged"
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged --pid-file=$MUNGE_PID
    wait_for 10 munged munge -n
}

start_mariadb() {
    if ! pid_alive $MYSQL_PID; then
        log "starting mariadbd"
        install -d -o mysql -g mysql -m 0755 /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        fi
        setsid mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=$MYSQL_PID \
            >"$LOG_DIR/mariadb.log" 2>&1 </dev/null &
    fi
    wait_for 30 "MariaDB (see $LOG_DIR/mariadb.log)" mariadb-admin ping
    mariadb -u root <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    if ! pid_alive $DBD_PID; then
        log "starting slurmdbd"
        slurmdbd
    fi
    wait_for 30 "slurmdbd (see $LOG_DIR/slurmdbd.log)" sacctmgr -n list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurm() {
    if ! pid_alive $CTLD_PID; then
        log "starting slurmctld"
        slurmctld
    fi
    wait_for 30 "slurmctld (see $LOG_DIR/slurmctld.log)" scontrol ping
    if ! pid_alive $SLURMD_PID; then
        log "starting slurmd"
        slurmd
    fi
    wait_for 60 "the node to be idle (see $LOG_DIR/slurmd.log)" node_ready
}

node_ready() {
    local state
    state=$(sinfo -h -o %T 2>/dev/null) || return 1
    [[ $state == idle* || $state == mixed* || $state == allocated* ]]
}

stop_daemon() {  # stop_daemon NAME PIDFILE
    local name=$1 file=$2 pid
    pid_alive "$file" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    log "stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
        sleep 0.1
    done
    log "$name did not stop in 10 s; sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$file"
}

# --- commands --------------------------------------------------------------------------------

cmd_start() {
    local t0=$SECONDS
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    log "cluster '$CLUSTER' up in $((SECONDS - t0)) s: $(sinfo -h -o '%P %D %T %c CPUs')"
}

cmd_stop() {
    if pid_alive $CTLD_PID; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling jobs: $(echo $jobs)"
            # shellcheck disable=SC2086
            scancel $jobs || true
            for _ in $(seq 100); do
                [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    stop_daemon slurmd $SLURMD_PID
    stop_daemon slurmctld $CTLD_PID
    stop_daemon slurmdbd $DBD_PID
    stop_daemon mariadbd $MYSQL_PID
    stop_daemon munged $MUNGE_PID
}

cmd_status() {
    local rc=0 name file
    for name in munged:$MUNGE_PID mariadbd:$MYSQL_PID slurmdbd:$DBD_PID \
        slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
        file=${name#*:}
        if pid_alive "$file"; then
            echo "${name%%:*}: running (pid $(cat "$file"))"
        else
            echo "${name%%:*}: stopped"
            rc=1
        fi
    done
    if ((rc == 0)); then sinfo; fi
    return $rc
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
