#!/usr/bin/env bash
# Starts a single-node Slurm on this machine for the Slurm executor's tests (and developers):
# munged, slurmctld and slurmd run directly (no systemd), configured for localhost, no cgroups.
# Installs Debian's slurm-wlm and munge when missing (as root). Idempotent: a running cluster
# whose node takes jobs is left as it is. Needs root (slurmd runs jobs as their users).
set -euo pipefail

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  echo "slurm-up: installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y --no-install-recommends slurm-wlm munge
fi

# up: the node takes jobs (idle, or busy with some)
up() { sinfo -h -o '%T' 2>/dev/null | grep -Eqx 'idle|mixed|allocated|completing'; }
if up; then
  echo "slurm-up: Slurm is up ($(sinfo -h -o '%P %D %T'))"
  exit 0
fi

host="$(hostname -s)"
cpus="$(nproc)"
# the node's memory in MB, less some for the system
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
state=/var/spool/slurmctld
spool=/var/spool/slurmd
logs=/var/log/slurm
mkdir -p /etc/slurm "$state" "$spool" "$logs" /run/munge /var/lib/munge /var/log/munge

# munge: a key and its daemon (slurm authenticates with it)
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null >/dev/null 2>&1; then
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
  else
    /usr/sbin/munged --force
  fi
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null | unmunge >/dev/null
fi

cat > /etc/slurm/slurm.conf <<CONF
# single-node Slurm for tests, written by .ci/slurm-up.sh
ClusterName=mstar
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${state}
SlurmdSpoolDir=${spool}
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${logs}/slurmctld.log
SlurmdLogFile=${logs}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -i
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 100); do
  if up; then
    echo "slurm-up: Slurm is up on ${host} (${cpus} CPUs, ${mem} MB): $(sinfo -h -o '%P %D %T')"
    exit 0
  fi
  sleep 0.3
done
echo "slurm-up: the node does not take jobs; sinfo says:" >&2
sinfo >&2 || true
tail -n 20 "$logs/slurmctld.log" "$logs/slurmd.log" >&2 || true
exit 1
