#!/usr/bin/env bash
# A single-node SLURM cluster on this machine for the tests (tests/test_slurm.py): munge, slurmctld and
# slurmd from Debian 12's packages (SLURM 22.05), as root, with a minimal slurm.conf: this host, its CPUs,
# one partition `debug`, requeue allowed. No cgroups (proctrack/linuxproc, task/none): it runs in a
# container. Idempotent: a cluster whose node is up and runs a job is left alone; one whose daemon died or whose
# node went down is started again (tests/test_slurm.py runs this script again before its first job, under CI).
# Exit 0: it runs a job; 3: its node is up but no job runs here (what the cluster says is printed); 1: no cluster.
set -euo pipefail
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurmctld slurmd slurm-client munge
fi
srun_said="$(mktemp)"
trap 'rm -f "$srun_said"' EXIT
runs_a_job() { timeout 90 srun --immediate=60 -n 1 -J slurm-up-check true >"$srun_said" 2>&1; }
if timeout 10 sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)' && runs_a_job; then
    echo "slurm: already up, and it runs a job"; exit 0
fi
host="$(hostname -s)"
# this host's name resolves here, not through a DNS server that a machine without network may never answer
grep -qw -- "$host" /etc/hosts || echo "127.0.0.1 $host" | $sudo tee -a /etc/hosts >/dev/null
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)"  # half of it: leave the rest to the host
$sudo mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
# written when missing or when it is this script's own (ClusterName=ci): a real cluster's is left alone
conf_is_ours() { [ ! -s /etc/slurm/slurm.conf ] || grep -qx 'ClusterName=ci' /etc/slurm/slurm.conf; }
conf_is_ours && $sudo tee /etc/slurm/slurm.conf >/dev/null <<CONF
ClusterName=ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire (how long a job's launch credential lives; a requeued job also waits it out) stays at its
# default, 120 s: a shorter one fails the launch of a job whose user or host lookups are slow, and SLURM then
# requeues that job held, pending for ever
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
KillWait=30
MinJobAge=600
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# munge: the packaged key, owned as munged wants it
if [ ! -s /etc/munge/munge.key ]; then $sudo mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
    || $sudo dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
$sudo chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
$sudo chmod 0700 /etc/munge /var/log/munge; $sudo chmod 0400 /etc/munge/munge.key; $sudo chmod 0755 /run/munge
if ! pgrep -x munged >/dev/null; then
    if [ -z "$sudo" ]; then runuser -u munge -- /usr/sbin/munged; else sudo -u munge /usr/sbin/munged; fi
fi
node_up=0
for attempt in 1 2; do
    pgrep -x slurmctld >/dev/null || $sudo /usr/sbin/slurmctld
    pgrep -x slurmd >/dev/null || $sudo /usr/sbin/slurmd
    for _ in $(seq 60); do
        state="$(sinfo -h -o '%t' 2>/dev/null || true)"
        # a node marked down or drained (its slurmd was gone a while) is handed back to the scheduler
        case "$state" in down* | drain* | drng*) $sudo scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;; esac
        if grep -qE '^(idle|mix|alloc)' <<<"$state"; then node_up=1; break; fi
        sleep 1
    done
    if [ "$node_up" = 1 ]; then
        began=$SECONDS
        if runs_a_job; then
            echo "slurm: up, and it runs a job in $((SECONDS - began)) s ($(sinfo -h -o '%P %D %c %t'))"; exit 0
        fi
        echo "slurm: the node is up but a one-second job did not run within 60 s (try $attempt of 2)" >&2
        cat "$srun_said" >&2
    fi
    [ "$attempt" = 2 ] && break
    # once more from a clean start: jobs whose launch failed released, both daemons restarted
    for job in $(squeue -h -t PD -o '%i %r' 2>/dev/null | awk '/launch failed/ {print $1}'); do
        $sudo scontrol release "$job" || true
    done
    $sudo pkill -x slurmd || true; $sudo pkill -x slurmctld || true; sleep 3
done
echo "slurm: not usable; what it says:" >&2
{ sinfo -R; squeue -o '%i %j %T %M %r'; scontrol show node; } >&2 2>&1 || true
$sudo tail -n 25 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
# 3: the daemons answer and the node is up, yet no job runs on this machine; 1: no cluster at all
[ "$node_up" = 1 ] && exit 3
exit 1
