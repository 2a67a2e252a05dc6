#!/usr/bin/env bash
# slurm_up.sh -- a real single-node SLURM cluster on this machine's loopback, for trying
# `bikebench run SPEC --executor slurm` and for the SLURM-marked tests (tests/slurm/).
#
#   make slurm-up                 # or: bash scripts/slurm_up.sh   (needs root; uses sudo when not root)
#   make slurm-down               # stops it again (scripts/slurm_down.sh)
#
# What it does, each step only when needed (re-running it on a live cluster returns in ~1 s):
#   1. installs Debian's munge slurmctld slurmd slurm-client slurmdbd mariadb-server (apt, no prompts,
#      with the packages' init scripts kept from starting anything);
#   2. writes /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf (the client tools -- sbatch, squeue,
#      sacct, hence submitit -- read that path); the node's CPUs and memory come from `slurmd -C`;
#   3. starts munged, MariaDB, slurmdbd, slurmctld and slurmd as plain processes (no systemd) with
#      pidfiles under $BIKEBENCH_SLURM_BASE/run; daemons are restarted when their config changed;
#   4. waits until the node is idle.
#
# Accounting (slurmdbd + MariaDB) is not optional: submitit reads job states only through `sacct`;
# without it a cancelled job makes `job.result()` wait forever.
#
# Environment knobs:
#   BIKEBENCH_SLURM_BASE         state/spool/log/pid/db directory     (default /var/tmp/bikebench-slurm)
#   BIKEBENCH_SLURM_PARTITION    partition name                       (default debug)
#   BIKEBENCH_SLURM_WAIT         seconds to wait for each daemon and for the node (default 90)
#   BIKEBENCH_SLURM_CRED_EXPIRE  AuthInfo cred_expire: seconds a requeued job waits before it may
#                                start again (SLURM default 120, minimum 5)   (default 10)
#   BIKEBENCH_SLURM_MEM_PERCENT  RealMemory as a percentage of what `slurmd -C` reports (default 95)
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}

BASE=${BIKEBENCH_SLURM_BASE:-/var/tmp/bikebench-slurm}
PARTITION=${BIKEBENCH_SLURM_PARTITION:-debug}
WAIT_S=${BIKEBENCH_SLURM_WAIT:-90}
CRED_EXPIRE=${BIKEBENCH_SLURM_CRED_EXPIRE:-10}
MEM_PERCENT=${BIKEBENCH_SLURM_MEM_PERCENT:-95}
CLUSTER=bikebench
SLURM_CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
RUN=$BASE/run
LOGDIR=$BASE/log
DB_DIR=$BASE/mariadb
DB_SOCK=/run/mysqld/mysqld.sock      # MariaDB's compiled-in default: slurmdbd's client finds it
DB_PID=$DB_DIR/mariadbd.pid          # MariaDB writes its pid and log where the mysql user may
MUNGE_PID=/run/munge/munged.pid
DBD_PID=$RUN/slurmdbd.pid
CTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid
STARTED_SUM=$RUN/config.sha256       # checksum of the configs the running daemons were started with
DB_USER=slurm
DB_PASS=bikebench-local              # socket-only MariaDB (no network), local to this machine
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

T0=$(date +%s.%N)
log() { printf '[slurm-up %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "needs root (and sudo is not installed)"
    exec sudo --preserve-env=BIKEBENCH_SLURM_BASE,BIKEBENCH_SLURM_PARTITION,BIKEBENCH_SLURM_WAIT,BIKEBENCH_SLURM_CRED_EXPIRE,BIKEBENCH_SLURM_MEM_PERCENT \
        bash "$0" "$@"
fi
[ -r /etc/debian_version ] || die "this script installs Debian packages; on other systems install SLURM yourself and see docs/slurm.md"

# ------------------------------------------------------------------------------------------ helpers
alive() {  # pidfile program -> 0 when the PID in it is a live process running that program
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]
}
wait_until() {  # seconds description command... ; polls every 0.3 s
    local limit=$1 what=$2; shift 2
    local end=$(( $(date +%s) + limit ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || die "$what did not come up within ${limit}s (logs: $LOGDIR)"
        sleep 0.3
    done
}
stop_by_pidfile() {  # pidfile program ; TERM, then KILL after 30 s (a stale pidfile is only removed)
    local pidfile=$1 name=$2 pid
    alive "$pidfile" "$name" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    log "stopping $name (pid $pid) to apply the new configuration"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.3; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}
config_sum() { cat "$SLURM_CONF" "$DBD_CONF" 2>/dev/null | sha256sum | cut -d' ' -f1; }
node_state() { sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null | head -1 | tr -d '*~#!%$@^-'; }
node_usable() { case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac; }

# ------------------------------------------------------------------------------------------ fast path
# Everything already running with the configuration on disk, accounting answering: nothing to do
# (a MariaDB that died under slurmdbd takes the full path, which starts it again).
if [ -s "$STARTED_SUM" ] && [ "$(cat "$STARTED_SUM")" = "$(config_sum)" ] \
    && alive "$DBD_PID" slurmdbd && alive "$CTLD_PID" slurmctld && alive "$SLURMD_PID" slurmd \
    && scontrol ping >/dev/null 2>&1 && node_usable \
    && mysqladmin --socket="$DB_SOCK" ping >/dev/null 2>&1 && sacct -n -X -S now >/dev/null 2>&1; then
    log "already up: node $(hostname -s) is $(node_state), partition $PARTITION ($(elapsed) s)"
    exit 0
fi

# ------------------------------------------------------------------------------------------ 1. install
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep the packages' init scripts from starting daemons
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt_opts=(-q -o DPkg::Lock::Timeout=300)   # wait while another apt/dpkg holds the lock
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends \
        "${missing[@]}" >/dev/null
    if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
    log "installed in $(elapsed) s"
fi

# ------------------------------------------------------------------------------------------ directories
mkdir -p "$BASE"/{state,spool,run,log} "$DB_DIR"
chmod 755 "$BASE" "$RUN" "$LOGDIR"
chown slurm:slurm "$BASE/state" "$RUN" "$LOGDIR"
chmod 700 "$BASE/state"
chown mysql:mysql "$DB_DIR"
# the slurm and mysql users must be able to walk down to $BASE
dir=$BASE
while [ "$dir" != / ]; do dir=$(dirname "$dir"); chmod o+x "$dir" 2>/dev/null || true; done

# ------------------------------------------------------------------------------------------ munge
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
    chmod 755 /run/munge
    chmod 700 /etc/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        head -c 1024 /dev/urandom > /etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    log "starting munged"
    rm -f "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged
    touch "$RUN/started-munge"     # slurm_down.sh stops munged only when this script started it
    wait_until "$WAIT_S" munged bash -c 'munge -n | unmunge'
fi

# ------------------------------------------------------------------------------------------ 2. configuration
read_hw() {  # key -> value from `slurmd -C`, e.g. "NodeName=vm CPUs=2 ... RealMemory=24105"
    sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$HW"
}
HW=$(slurmd -C | head -1)
NODE=$(hostname -s)
CPUS=$(read_hw CPUs); SOCKETS=$(read_hw SocketsPerBoard); CORES=$(read_hw CoresPerSocket)
THREADS=$(read_hw ThreadsPerCore); MEM_MB=$(read_hw RealMemory)
[ -n "$CPUS" ] && [ -n "$SOCKETS" ] && [ -n "$CORES" ] && [ -n "$THREADS" ] && [ -n "$MEM_MB" ] \
    || die "could not read CPUs/SocketsPerBoard/CoresPerSocket/ThreadsPerCore/RealMemory from 'slurmd -C': $HW"
# a node that reports less memory than slurm.conf claims is drained as INVAL: stay a little under
MEM_MB=$(( MEM_MB * MEM_PERCENT / 100 ))

write_if_changed() {  # path mode owner content
    local path=$1 mode=$2 owner=$3 content=$4
    if [ ! -f "$path" ] || [ "$(cat "$path")" != "$content" ]; then
        log "writing $path"
        mkdir -p "$(dirname "$path")"
        printf '%s\n' "$content" > "$path"
    fi
    chmod "$mode" "$path"
    chown "$owner" "$path"
}

write_if_changed "$SLURM_CONF" 644 root:root "$(cat <<EOF
# Written by bikebench scripts/slurm_up.sh: one node on 127.0.0.1, no systemd, no cgroups.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
# A requeued job may start again only after its credential expires (SLURM default 120 s).
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Plugins that need no cgroups.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Start new and requeued jobs within ~2 s (the defaults suit big clusters).
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=1
# submitit's job ignores SIGTERM: SIGKILL follows after KillWait s (default 30).
KillWait=5
ReturnToService=2
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=60
SlurmdTimeout=60
Waittime=0
JobCompType=jobcomp/none
# Accounting through slurmdbd so that sacct (which submitit polls) answers.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)"

write_if_changed "$DBD_CONF" 600 slurm:slurm "$(cat <<EOF
# Written by bikebench scripts/slurm_up.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=$DB_USER
StoragePass=$DB_PASS
EOF
)"

if [ "$(cat "$STARTED_SUM" 2>/dev/null)" != "$(config_sum)" ]; then
    # daemons started with another configuration (or none recorded): restart them
    stop_by_pidfile "$SLURMD_PID" slurmd
    stop_by_pidfile "$CTLD_PID" slurmctld
    stop_by_pidfile "$DBD_PID" slurmdbd
fi

# ------------------------------------------------------------------------------------------ 3. MariaDB
if ! mysqladmin --socket="$DB_SOCK" ping >/dev/null 2>&1; then
    mkdir -p "$(dirname "$DB_SOCK")"
    chown mysql:mysql "$(dirname "$DB_SOCK")"
    if [ ! -d "$DB_DIR/data/mysql" ]; then
        log "initialising MariaDB in $DB_DIR/data"
        mariadb-install-db --user=mysql --datadir="$DB_DIR/data" --skip-test-db \
            --auth-root-authentication-method=socket >"$DB_DIR/install.log" 2>&1 \
            || die "mariadb-install-db failed; see $DB_DIR/install.log"
    fi
    log "starting mariadbd (socket only)"
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" \
        --socket="$DB_SOCK" --pid-file="$DB_PID" --skip-networking \
        --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
        --log-error="$DB_DIR/mariadb.log" </dev/null >/dev/null 2>&1 &
    touch "$RUN/started-mariadb"   # slurm_down.sh stops MariaDB only when this script started it
    wait_until "$WAIT_S" "MariaDB (log: $DB_DIR/mariadb.log)" mysqladmin --socket="$DB_SOCK" ping
fi
mysql --socket="$DB_SOCK" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';"

# ------------------------------------------------------------------------------------------ slurmdbd
if ! alive "$DBD_PID" slurmdbd; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
fi
wait_until "$WAIT_S" slurmdbd sacctmgr -i -n list cluster
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

# ------------------------------------------------------------------------------------------ slurmctld, slurmd
if ! alive "$CTLD_PID" slurmctld; then
    log "starting slurmctld"
    /usr/sbin/slurmctld
fi
wait_until "$WAIT_S" slurmctld scontrol ping
if ! alive "$SLURMD_PID" slurmd; then
    log "starting slurmd"
    /usr/sbin/slurmd
fi
config_sum > "$STARTED_SUM"

# ------------------------------------------------------------------------------------------ 4. node idle
end=$(( $(date +%s) + WAIT_S ))
until node_usable; do
    state=$(node_state || true)
    case "$state" in
        *drain*|*down*|inval*|fail*)   # left over from an earlier start with another configuration
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    if [ "$(date +%s)" -ge "$end" ]; then
        sinfo -R >&2 || true
        die "node $NODE is '${state:-unknown}', not idle, after ${WAIT_S}s (logs: $LOGDIR)"
    fi
    sleep 0.3
done
log "up in $(elapsed) s: node $NODE is $(node_state), $CPUS CPUs, ${MEM_MB} MB, partition $PARTITION (logs: $LOGDIR)"
sinfo -N -o '%N %P %T %c %m' >&2
