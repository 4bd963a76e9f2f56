"""A real single-node SLURM cluster for the tests (Debian's `slurm-wlm` + `munge`, see env-notes).

`start(folder)` installs the packages when they are missing and we are root, starts `munged` if it
is not running, writes a slurm.conf into `folder` and starts `slurmctld` and `slurmd` from it. The
returned environment (SLURM_CONF) points every `sbatch`/`squeue`/submitit call at that cluster.
The node claims 8 CPUs (`config_overrides`) so a trainer and its shard workers run at once on 2 cores.
KillWait is 1 s: a hard requeue (`scontrol requeue`) kills a step in flight before it can finish (submitit
ignores the SIGTERM that comes first), so the hard-requeue test sees that step lost and redone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]


def _install() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        raise RuntimeError("SLURM tests need slurm-wlm and munge: install them or run the tests as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], check=True, env=env, capture_output=True)


def _munge() -> None:
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create"], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)


def start(folder: Path) -> dict[str, str]:
    _install()
    _munge()
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 - 1024
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=grpotest
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=1
MinJobAge=600
SlurmdParameters=config_overrides
NodeName={host} CPUs=8 RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for daemon in ("slurmctld", "slurmd"):
        subprocess.run([daemon], check=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout.strip()
        if state in ("idle", "mixed", "allocated"):
            return {"SLURM_CONF": str(conf)}
        time.sleep(1)
    raise RuntimeError(f"the test SLURM node did not come up (state {state!r}); see {folder}/slurmd.log")


def stop(folder: Path) -> None:
    for daemon in ("slurmd", "slurmctld"):
        pid = folder / f"{daemon}.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text().strip()), 15)
            except (ProcessLookupError, ValueError):
                pass
