#!/usr/bin/env python3
"""W26: autoscaling on a real one-host Slurm — from zero agents, a burst of 1,000 tasks of 1 s
(`blitzen submit --array 1-1000 -- sh -c 'sleep 1' {}`) on `blitzen-server --autoscale slurm`: the time to
the first agent connected (Slurm's start included), the most jobs Slurm held at once against
--max-agents, the time to the last result, how long after it every agent was gone (against
--idle-timeout plus one tick), and the jobs left in squeue. Needs root and Debian's slurm-wlm
(`./test.sh` installs it as root); starts a Slurm of its own (munge, slurmctld, slurmd with a
configuration of its own, free ports) and stops it at the end.

    cargo build --release -p blitzen-server -p blitzen-client -p blitzen-cli
    python3 bench/autoscale_bench.py --runs 3          # JSON lines on stdout, the table on stderr
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RELEASE = os.path.join(HERE, "..", "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Slurm:
    """munged, slurmctld and slurmd of their own in `dir`, the node offering `cpus` CPUs."""

    def __init__(self, dir, cpus):
        self.dir, self.daemons = dir, []
        munge = os.path.join(dir, "munge")
        for sub in ("munge", "state", "spool"):
            os.makedirs(os.path.join(dir, sub))
        os.chmod(munge, 0o755)
        with open(os.path.join(munge, "key"), "wb") as f:
            f.write(os.urandom(128))
        os.chmod(os.path.join(munge, "key"), 0o600)
        self.start("munged", "-F", "--force", *(f"--{n}={munge}/{f}" for n, f in (
            ("socket", "socket"), ("key-file", "key"), ("log-file", "log"), ("pid-file", "pid"),
            ("seed-file", "seed"))))
        while not os.path.exists(os.path.join(munge, "socket")):
            time.sleep(0.02)
        host = socket.gethostname().split(".")[0]
        self.conf = os.path.join(dir, "slurm.conf")
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=blitzenbench
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge}/socket
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=2
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        os.environ["SLURM_CONF"] = self.conf
        self.start("slurmctld", "-D", "-i", "-f", self.conf)
        self.start("slurmd", "-D", "-f", self.conf)
        deadline = time.monotonic() + 30
        while self.sinfo() != "idle":
            if time.monotonic() > deadline:
                raise RuntimeError("the Slurm node did not become idle")
            time.sleep(0.1)

    def start(self, program, *args):
        log = open(os.path.join(self.dir, program + ".out"), "w")
        self.daemons.append(subprocess.Popen([program, *args], stdout=log, stderr=log))

    def sinfo(self):
        out = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True)
        return out.stdout.strip()

    def jobs(self):
        out = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True)
        return [line for line in out.stdout.split() if line]

    def stop(self):
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        deadline = time.monotonic() + 20
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.1)
        for daemon in reversed(self.daemons):
            daemon.terminate()
        for daemon in self.daemons:
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()


def burst(tmp, args):
    """One run: the burst from zero agents; its figures."""
    secret = os.path.join(tmp, "secret")
    with open(secret, "w") as f:
        f.write("a secret for the autoscaling benchmark")
    os.chmod(secret, 0o600)
    address = os.path.join(tmp, f"server-{time.monotonic_ns()}.address")
    server = subprocess.Popen(
        [os.path.join(RELEASE, "blitzen-server"), "--port", "0", "--secret-file", secret,
         "--address-file", address, "--autoscale", "slurm", "--max-agents", str(args.max_agents),
         "--agent-workers", str(args.agent_workers), "--idle-timeout", f"{args.idle_timeout}s",
         "--autoscale-interval", f"{args.interval}s", "--log-file", os.path.join(tmp, "server.log")],
        stdout=subprocess.PIPE, text=True, cwd=tmp)
    try:
        return burst_on(server, tmp, secret, args)
    finally:
        server.terminate()
        server.wait(60)


def burst_on(server, tmp, secret, args):
    addr = server.stdout.readline().strip().rsplit(" ", 1)[-1]
    status = [os.path.join(RELEASE, "blitzen-server"), "status", "--server", addr, "--json",
              "--secret-file", secret]
    env = dict(os.environ, BLITZEN_STATE_DIR=os.path.join(tmp, "state"))
    start = time.monotonic()
    driver = subprocess.Popen(
        [os.path.join(RELEASE, "blitzen"), "submit", "--server", addr, "--secret-file", secret,
         "--array", f"1-{args.tasks}", "--wait", "--", "sh", "-c", f"sleep {args.seconds}", "{}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp)
    first_agent, most_jobs, submitted = None, 0, 0
    slurm_jobs = lambda: len(subprocess.run(["squeue", "--noheader", "--format=%i"],
                                            capture_output=True, text=True).stdout.split())
    while driver.poll() is None:
        most_jobs = max(most_jobs, slurm_jobs())
        got = subprocess.run(status, capture_output=True, text=True)
        if got.returncode == 0:
            s = json.loads(got.stdout)
            if first_agent is None and s["agents"]:
                first_agent = time.monotonic() - start
            submitted = (s.get("autoscale") or {}).get("submitted", submitted)
        time.sleep(0.2)
    done = time.monotonic() - start
    if driver.returncode != 0:
        raise RuntimeError(f"blitzen submit failed: {driver.stderr.read()[-500:]}")
    while slurm_jobs() and time.monotonic() - start < done + 120:
        time.sleep(0.1)
    gone = time.monotonic() - start - done
    left = slurm_jobs()
    return {"first_agent_s": first_agent, "most_jobs": most_jobs, "submitted": submitted,
            "done_s": done, "gone_after_s": gone, "jobs_left": left}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.0, help="each task's sleep")
    parser.add_argument("--max-agents", type=int, default=10)
    parser.add_argument("--agent-workers", type=int, default=4)
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=1.0, help="the autoscaler's tick")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("slurmctld", path=os.environ["PATH"] + ":/usr/sbin"):
        parser.error("needs root and Slurm (slurm-wlm): run ./test.sh as root once")
    os.environ["PATH"] += ":/usr/sbin"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        slurm = Slurm(os.path.join(tmp, "slurm"), args.max_agents * args.agent_workers)
        try:
            for _ in range(args.runs):
                row = burst(tmp, args)
                rows.append(row)
                print(json.dumps({"workload": "W26", **row, "max_agents": args.max_agents,
                                  "agent_workers": args.agent_workers, "tasks": args.tasks,
                                  "idle_timeout_s": args.idle_timeout, "tick_s": args.interval}))
        finally:
            slurm.stop()
    med = lambda key: statistics.median(r[key] for r in rows)
    print(f"W26 ({args.tasks} × {args.seconds} s, {args.max_agents} agents of {args.agent_workers} "
          f"workers, medians of {args.runs}): first agent {med('first_agent_s'):.2f} s, done "
          f"{med('done_s'):.1f} s (ideal {args.tasks * args.seconds / (args.max_agents * args.agent_workers):.1f} s), "
          f"every agent gone {med('gone_after_s'):.1f} s after the last result (idle timeout "
          f"{args.idle_timeout} s + tick {args.interval} s), most jobs {max(r['most_jobs'] for r in rows)}, "
          f"asked for {max(r['submitted'] for r in rows)}, left {max(r['jobs_left'] for r in rows)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
