"""Start N ranks of tests/mova_model/parallel/rank_main.py as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR=127.0.0.1, a free MASTER_PORT), one thread each, and wait for them with a deadline."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RANK_MAIN = REPO / "tests" / "mova_model" / "parallel" / "rank_main.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, args, deadline_s: float = 120.0):
    """Run `world` ranks; returns [(returncode, stderr)] per rank. Kills every rank past the deadline."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs.append(subprocess.Popen([sys.executable, str(RANK_MAIN), *map(str, args)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    end = time.monotonic() + deadline_s
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, err = proc.communicate()
            err = "DEADLINE EXCEEDED\n" + err
        results.append((proc.returncode, err))
    return results
