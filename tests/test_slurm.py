"""The workflow through profiles/slurm on a real one-node SLURM cluster started in a temp dir.

Needs root, munge and SLURM (Debian ``slurm-wlm munge``) and snakemake-executor-plugin-slurm;
skipped otherwise. No slurmdbd: job status comes from ``squeue`` (``MinJobAge`` keeps finished
jobs visible) and ``jobcomp/filetxt`` records every job that ran.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_workflow import TIMED, digests

REPO = Path(__file__).resolve().parents[1]
# Two structures, one grid point, three shards: seven jobs, a minute or so on two cores.
SMALL = """
seed: 5
structures: [3hhb, {source: 1bxn, name: prx}]
simulation:
  snr: [0.5]
  tilt_max_deg: [60]
  per_class: 4
  shard_size: 4
"""
TARGETS = ("results/densities/summary.tsv", "results/datasets/snr0.5_tilt60.h5")
JOBS = 7  # density x2, density_summary, simulate_shard x3, join_dataset
PARTITION = "local"
DAEMONS = ("munged", "slurmctld", "slurmd", "slurmstepd")
# The client commands the plugin (and its jobstep plugin on the node) calls.
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel", "sacctmgr", "sshare")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
SNAKEMAKE_TIMEOUT_S = 240
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def which(name: str) -> str | None:
    """A program on PATH or in the sbin folders, where Debian puts the daemons."""
    return shutil.which(name, path=SEARCH_PATH)


def missing_requirements() -> list[str]:
    missing = [name for name in DAEMONS + CLIENTS if which(name) is None]
    for package in ("snakemake_executor_plugin_slurm", "snakemake_executor_plugin_slurm_jobstep"):
        if importlib.util.find_spec(package) is None:
            missing.append(f"the Python package {package}")
    if os.geteuid() != 0:
        missing.append("root (slurmd and munged run as root here)")
    return missing


MISSING = missing_requirements()
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason="a local SLURM cluster needs " + ", ".join(MISSING)
    + " (apt-get install slurm-wlm munge; pip install -r envs/requirements.txt)")


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (all bound at once, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def clean_environment() -> dict[str, str]:
    """os.environ without SLURM client settings (pytest may itself run inside a SLURM job)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_", "SINFO_"))}


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"--- {path.name}: missing\n"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path.name} (last {len(text)} lines)\n" + "\n".join(text) + "\n"


def node_hardware() -> str:
    """This machine as a NodeName line would describe it, memory left out."""
    result = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True,
                            env=clean_environment(), timeout=30)
    first = result.stdout.splitlines()[0] if result.returncode == 0 and result.stdout else ""
    fields = [f for f in first.split() if f.split("=")[0] in
              ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")]
    return " ".join(fields) if fields else f"CPUs={os.cpu_count()}"


def real_memory_mb() -> int:
    """Most of the machine's memory, so that slurmd never finds less than configured."""
    with open("/proc/meminfo") as meminfo:
        total_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    return int(total_kb / 1024 * 0.85)


@dataclass
class Cluster:
    root: Path
    conf: Path
    node: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(command, capture_output=True, text=True, env=self.env,
                                timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed: {result.stderr}\n{self.logs()}")
        return result

    def start(self, name: str, *command: str) -> None:
        with open(self.root / f"{name}.out", "w") as out:
            self.processes[name] = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.root, start_new_session=True)

    def check_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}\n{self.logs()}")

    def logs(self) -> str:
        """The daemons' log tails, for failure messages (.out: what came before the log)."""
        return "".join(tail(self.root / name, lines)
                       for name, lines in (("munged.out", 15), ("slurmctld.out", 15),
                                           ("slurmctld.log", 40), ("slurmd.out", 15),
                                           ("slurmd.log", 40)))

    def active_jobs(self) -> list[str]:
        """Ids of the jobs that have not ended."""
        result = self.run("squeue", "--noheader", "--states=all", "--format=%i|%T", check=False)
        return [line.split("|")[0] for line in result.stdout.split()
                if line.split("|")[-1] not in ENDED]

    def stop(self) -> None:
        """Cancel what is left on the queue, then stop our daemons, newest first."""
        ctld = self.processes.get("slurmctld")
        if ctld is not None and ctld.poll() is None and self.active_jobs():
            self.run("scancel", *self.active_jobs(), check=False)
            deadline = time.time() + 20
            while time.time() < deadline and self.active_jobs():
                time.sleep(0.5)
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=15)


def write_conf(root: Path, node: str, munge_socket: Path) -> Path:
    ctld_port, slurmd_port = free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=tomosift-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# Finished jobs stay visible to squeue, the plugin's status command without slurmdbd.
MinJobAge=600
MpiDefault=none
SwitchType=switch/none
NodeName={node} NodeAddr=127.0.0.1 {node_hardware()} RealMemory={real_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def wait_for_idle(cluster: Cluster, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    resumed = False
    state = ""
    while time.time() < deadline:
        cluster.check_running()
        result = cluster.run("sinfo", "--noheader", "--Node", "--nodes", cluster.node,
                             "--format=%T", check=False)
        state = result.stdout.strip().lower().rstrip("*~#!%$@^-")
        if state == "idle":
            return
        if not resumed and any(word in state for word in ("down", "drain", "inval")):
            cluster.run("scontrol", "update", f"nodename={cluster.node}", "state=resume",
                        check=False)
            resumed = True
        time.sleep(0.5)
    raise AssertionError(f"node {cluster.node} not idle after {timeout_s} s "
                         f"(state {state!r})\n{cluster.logs()}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """munged, slurmctld and slurmd in the foreground, stopped by pid at teardown."""
    root = tmp_path_factory.mktemp("slurm")
    short_root = None
    if len(str(root)) > 60:  # unix socket paths (munge, slurmd steps) must stay under 108
        root = short_root = Path(tempfile.mkdtemp(prefix="tomosift-slurm-"))
    for folder in ("state", "spool", "bin"):
        (root / folder).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = root / "munge.socket"
    node = socket.gethostname().split(".")[0]
    conf = write_conf(root, node, munge_socket)
    # The jobstep plugin drops every SLURM_* variable, SLURM_CONF too, before it calls srun in
    # the job; real clusters keep slurm.conf where srun looks by default.
    srun = root / "bin/srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {which("srun")} "$@"\n')
    srun.chmod(0o755)
    env = clean_environment()
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = os.pathsep.join([str(root / "bin"), str(Path(sys.executable).parent),
                                   SEARCH_PATH])
    cluster = Cluster(root=root, conf=conf, node=node, env=env)
    try:
        # --force: munged refuses a socket folder that is not world-executable (pytest's is 0700)
        cluster.start("munged", which("munged"), "--foreground", "--force",
                      f"--key-file={key}", f"--socket={munge_socket}",
                      f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed",
                      f"--log-file={root}/munged.log")
        deadline = time.time() + 20
        while not munge_socket.exists():
            cluster.check_running()
            if time.time() > deadline:
                raise AssertionError(f"munged made no socket in 20 s\n{cluster.logs()}")
            time.sleep(0.1)
        cluster.start("slurmctld", which("slurmctld"), "-D", "-f", str(conf))
        cluster.start("slurmd", which("slurmd"), "-D", "-N", node, "-f", str(conf))
        wait_for_idle(cluster)
        yield cluster
    finally:
        cluster.stop()
        if short_root is not None:
            shutil.rmtree(short_root, ignore_errors=True)


def snakemake(workdir: Path, *extra: str, env: dict[str, str] | None = None,
              timeout_s: float = SNAKEMAKE_TIMEOUT_S) -> tuple[int, str]:
    """Run the workflow on SMALL's TARGETS in workdir; (exit code, output)."""
    (workdir / "config.yaml").write_text(SMALL)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
               "--replace-workflow-config", *extra, *TARGETS]
    log = workdir / "snakemake.out"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=workdir, env=env)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
            out.write(f"\n[killed after {timeout_s} s]\n")
    return code, log.read_text(errors="replace")


def compared(workdir: Path) -> dict[str, str]:
    return {k: v for k, v in digests(workdir / "results").items() if not k.startswith(TIMED)}


def test_slurm_run_matches_local_run(cluster: Cluster, tmp_path: Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    remote.mkdir()
    code, output = snakemake(local, "--cores", "2", env=clean_environment())
    assert code == 0, output[-4000:]

    code, output = snakemake(
        remote, "--profile", str(REPO / "profiles/slurm"),
        # what a one-node cluster without accounting needs instead of the profile's defaults
        "--default-resources", "slurm_account=tomosift-test", f"slurm_partition={PARTITION}",
        "mem_mb=1000", "runtime=10",
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs", env=cluster.env)
    failure = f"{output[-6000:]}\n{cluster.logs()}"
    assert code == 0, failure

    reference = compared(local)
    assert all(target in reference for target in
               (t.removeprefix("results/") for t in TARGETS)), sorted(reference)
    assert compared(remote) == reference

    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert len(submitted) == JOBS, failure
    logs = {p.stem for p in (remote / ".snakemake/slurm_logs").rglob("*.log")}
    assert set(submitted) <= logs, (sorted(submitted), sorted(logs))
    # slurmctld's own record of each job: its id and COMPLETED
    records = (cluster.root / "jobcomp.txt").read_text()
    completed = set(re.findall(r"JobId=(\d+) .*?JobState=COMPLETED", records))
    assert set(submitted) <= completed, records
