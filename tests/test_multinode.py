"""Two nodes, not two processes: two torchrun agents on this host meet through a c10d rendezvous
as two nodes of one process each (the way a SLURM job starts one agent per machine), train, are
preempted with SIGTERM to one agent, and resume to the weights of an uninterrupted run.

How torchrun (2.x) handles the SIGTERM: the agent's handler (``--signals-to-handle``, default
SIGTERM,SIGINT,SIGHUP,SIGQUIT) raises SignalException in the agent, which sends the same signal to
its workers' process group and waits up to TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default 30 s) before
SIGKILL. A step here takes well under a second, so the worker's SignalGuard sees the signal, every
rank agrees through `dist.any_rank` after the current step, rank 0 (possibly on the other node)
saves a checkpoint, and both workers exit 2 with the `--resume` line. The signalled agent re-raises
(exit 1 on this torch, after its worker has stopped); the other agent sees its worker fail and, with
`--max-restarts 0`, exits 1 too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simclr.checkpoint import load_checkpoint

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
pytestmark = [
    pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python"),
    pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the workers"),
]

DOC = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
# digits: 898 training images, 7 steps of 128 per epoch; device=cpu: gloo, also on a GPU machine.
TRAIN = ["--epochs", "2", "--batch-size", "128", "data.pretrain_on=train", "device=cpu", "threads=1", "log_every=1",
         "checkpoint_every=0", "eval_every=0", "eval_finetune=false", "report=false"]
TOTAL_STEPS = 14
# LOGLEVEL=INFO: torchrun prints its rendezvous result (group_rank=..., the node rank).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO"}


def agent_command(endpoint: str, rdzv_id: str, *train_args: str) -> list[str]:
    """One node's torchrun: docs/distributed.md shows this command line (test below)."""
    return [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id,
            "--max-restarts", "0", "-m", "simclr", "train", *train_args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Nodes:
    """Two agents of one rendezvous, each in its own session; their logs go to files. torchrun
    starts each worker in a session of its own too, so `kill` also ends the workers it saw."""

    def __init__(self, logs: Path, name: str, endpoint: str, *train_args: str) -> None:
        rdzv_id = f"{name}-{uuid.uuid4().hex[:8]}"  # a new id per launch, as a new SLURM job has
        self.logs = [logs / f"{name}-agent{i}.log" for i in range(2)]
        self.agents: list[subprocess.Popen[bytes]] = []
        self.workers: set[int] = set()
        for log in self.logs:
            with open(log, "wb") as f:
                self.agents.append(subprocess.Popen(agent_command(endpoint, rdzv_id, *train_args), env=ENV,
                                                    stdout=f, stderr=subprocess.STDOUT, start_new_session=True))

    def text(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def node_rank(self, i: int) -> int | None:
        m = re.search(r"group_rank=(\d+)", self.text(i))
        return int(m.group(1)) if m else None

    def poll(self) -> None:
        for a in self.agents:
            self.workers.update(children(a.pid))

    def wait(self, timeout: float) -> list[int]:
        deadline = time.time() + timeout
        while time.time() < deadline and any(a.poll() is None for a in self.agents):
            self.poll()
            time.sleep(0.05)
        running = [a.pid for a in self.agents if a.poll() is None]
        assert not running, f"agents {running} still running after {timeout} s:\n{self.tails()}"
        return [a.wait() for a in self.agents]

    def tails(self) -> str:
        return "\n".join(f"--- agent {i}:\n" + self.text(i)[-3000:] for i in range(2))

    def kill(self) -> None:
        self.poll()
        # Agents not yet reaped (their pid is still theirs), and workers still running this program.
        groups = [a.pid for a in self.agents if a.returncode is None] + [w for w in self.workers if ours(w)]
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        for a in self.agents:
            with contextlib.suppress(subprocess.TimeoutExpired):
                a.wait(10)


def ours(pid: int) -> bool:
    """A worker torchrun started: still alive, leading its own process group, running simclr."""
    try:
        return os.getpgid(pid) == pid and b"simclr" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@contextlib.contextmanager
def nodes(logs: Path, name: str, endpoint: str, *train_args: str) -> Iterator[Nodes]:
    n = Nodes(logs, name, endpoint, *train_args)
    try:
        yield n
    finally:  # never leave agents or workers behind
        n.kill()


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def check_two_nodes(n: Nodes) -> None:
    """Each agent is a node of its own (group_rank 0 and 1), each with one worker, and rank 0,
    the one that reports, runs on node 0: its log holds the run's lines, node 1's does not."""
    ranks = [n.node_rank(i) for i in range(2)]
    assert ranks in ([0, 1], [1, 0]), n.tails()
    for i in range(2):
        assert "group_world_size=2" in n.text(i) and f"global_ranks=[{ranks[i]}]" in n.text(i), n.tails()
    node0 = ranks.index(0)
    assert "× 2, global batch 128" in n.text(node0), n.tails()
    assert "global batch 128" not in n.text(1 - node0), n.tails()


def test_two_node_agents_preempted_and_resumed_bit_identical(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    full, run = tmp_path / "full", tmp_path / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    stop_after = random.Random().randint(2, 9)  # of 14 steps: within the first epoch or the second

    # The uninterrupted reference runs beside the one to preempt (its own rendezvous): on 2 cores,
    # rank 0's final evaluation and the agents' waits leave a core to the other pair.
    with nodes(logs, "full", f"127.0.0.1:{free_port()}", *TRAIN, "--out", str(full)) as ref, \
            nodes(logs, "first", endpoint, *TRAIN, "--out", str(run)) as first:
        deadline = time.time() + 240
        while time.time() < deadline and None in (first.node_rank(0), first.node_rank(1)):
            assert all(a.poll() is None for a in first.agents), first.tails()
            time.sleep(0.05)
        victim = [first.node_rank(i) for i in range(2)].index(1)  # preempt the node that does not write
        while time.time() < deadline and max(logged_steps(run), default=0) < stop_after:
            assert first.agents[victim].poll() is None, first.tails()
            first.poll()
            time.sleep(0.02)
        signalled_at = max(logged_steps(run), default=0)
        assert stop_after <= signalled_at < TOTAL_STEPS, first.tails()
        first.agents[victim].send_signal(signal.SIGTERM)
        codes = first.wait(120)
        check_two_nodes(first)
        assert ref.wait(240) == [0, 0], ref.tails()
        check_two_nodes(ref)
    assert codes == [1, 1], first.tails()  # workers exit 2; each agent reports a failed group
    # The signalled agent forwarded SIGTERM to its worker, which asked every rank to stop.
    assert "closing signal SIGTERM" in first.text(victim) and "signal 15: saving a checkpoint" in first.text(victim)
    assert "SIGKILL" not in first.text(victim), "the worker did not stop within torchrun's grace period"
    stopped = re.findall(r"error: stopped at step (\d+); continue with: simclr train --resume (\S+)",
                         first.text(0) + first.text(1))
    assert len(stopped) == 2 and len(set(stopped)) == 1, first.tails()  # both ranks, one step
    step = int(stopped[0][0])
    assert stopped[0][1] == str(run)
    assert signalled_at < step < TOTAL_STEPS, f"signalled at step {signalled_at}, stopped at {step}"
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["progress"]["step"] == step and len(state["rng"]["augment"]) == 2
    assert logged_steps(run) == list(range(1, step + 1))

    # What the error line says to do, on the same endpoint with a new id (a resubmitted job).
    with nodes(logs, "resumed", endpoint, "--resume", str(run)) as resumed:
        assert resumed.wait(240) == [0, 0], resumed.tails()
        check_two_nodes(resumed)
    assert f"resuming {run} from step {step}" in resumed.text(0) + resumed.text(1)
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["step"] == TOTAL_STEPS
    assert logged_steps(run) == list(range(1, TOTAL_STEPS + 1)), "each step once, in order, after the resume"

    a, b = load_file(str(full / "encoder.safetensors")), load_file(str(run / "encoder.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming from step {step}"
    head_a, head_b = load_checkpoint(full / "checkpoint.pt")["model"], load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(torch.equal(head_a[k], head_b[k]) for k in head_a), f"the head differs after resuming from step {step}"


def test_doc_shows_the_command_this_test_runs() -> None:
    """docs/distributed.md's multi-node and SLURM commands are this test's agent command, with
    placeholders only for the node count, processes per node, endpoint and id."""
    def normal(command: str) -> str:
        command = re.sub(r"\s+", " ", command.replace("\\\n", " "))
        return re.sub(r"(--nnodes|--nproc-per-node|--rdzv-endpoint|--rdzv-id) \S+", r"\1 X", command)

    flags = agent_command("127.0.0.1:29500", "ID")
    want = normal(" ".join(flags[1 : flags.index("-m") + 4]))  # from --nnodes to `-m simclr train`
    got = [normal(c) for c in re.findall(r"torchrun (--nnodes .*?-m simclr train)", DOC.read_text(), re.S)]
    assert len(got) >= 2, "the multi-node and the SLURM example"
    assert all(c == want for c in got), (want, got)
