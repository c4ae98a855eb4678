#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (munged, slurmctld, slurmd; a generated slurm.conf),
# for tests/slurm.rs and for trying experiments/slurm_sweep.sh without a cluster. Needs root;
# installs Debian's slurm-wlm and munge with apt-get when they are missing.
#
#   experiments/slurm_local_cluster.sh start DIR   # then: export SLURM_CONF=DIR/slurm.conf
#   experiments/slurm_local_cluster.sh stop DIR
#
# Everything the daemons write (state, spool, logs, pid files) stays under DIR; the munge key is
# the system's (/etc/munge/munge.key), made when there is none.
set -euo pipefail
usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# = 2 ] || usage
action=$1
dir=$(realpath -m "$2")

stop() {
  for daemon in slurmd slurmctld; do
    if [ -f "$dir/$daemon.pid" ]; then
      kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
      rm -f "$dir/$daemon.pid"
    fi
  done
  if [ -f "$dir/munged.started" ] && [ -f /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    rm -f "$dir/munged.started"
  fi
}

start() {
  [ "$(id -u)" = 0 ] || { echo "error: starting Slurm daemons needs root" >&2; exit 1; }
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || { echo "error: slurm-wlm and munge are missing and there is no apt-get" >&2; exit 1; }
    echo "installing Debian's slurm-wlm and munge" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  mkdir -p "$dir/state" "$dir/spool"

  # munge: a key, then the daemon (as its own user when the package made one).
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  owner=root
  id munge >/dev/null 2>&1 && owner=munge
  chown "$owner:" /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown "$owner:" /run/munge /var/lib/munge /var/log/munge
  if ! munge -n >/dev/null 2>&1; then
    if [ "$owner" = munge ]; then runuser -u munge -- munged; else munged --force; fi
    touch "$dir/munged.started"
  fi

  local host
  host=$(hostname -s)
  # slurmd -C describes this machine as a NodeName line (CPUs, sockets, cores, memory).
  local node
  node=$(slurmd -C | head -n 1)
  cat >"$dir/slurm.conf" <<CONF
ClusterName=specbench
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 1
  done
  echo "error: the node did not become idle within 60 s; logs: $dir/slurmctld.log, $dir/slurmd.log" >&2
  sinfo -N -l >&2 || true
  stop
  exit 1
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
