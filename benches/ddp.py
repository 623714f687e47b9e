"""Data-parallel training on MPI, measured (issue 15, item 6).

    python benches/ddp.py [--preset medium] [--steps 20] [--no-netns]

On this 2-core machine: the step time of 1 rank x 2 threads against 2 ranks x 1 thread on the same
global batch (scaling efficiency = the first / the second); the bytes all-reduced per step and the
all-reduce's time alone, on one machine (shared memory) and between two namespaced hosts over TCP
(scripts/netns_hosts.py; root only); then, on paper, the step time and efficiency of 16 hosts for
this preset and for a 100M-parameter model, from the measured compute time and a ring all-reduce's
2(K-1)/K x bytes / bandwidth at 10 and 100 Gbit/s.

Each measurement is a worker process (``--worker``: this file under mpirun or alone) that builds the
preset's model, runs warm-up steps, then times steps and all-reduces; rank 0 prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
BIN = Path(sys.executable).parent
MPI_ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}
WARMUP = 3


def worker(preset: str, steps: int, reduces: int, threads: int) -> None:
    import lmcore  # noqa: PLC0415
    from lmcore.checkpoint.state import new_model  # noqa: PLC0415
    from lmcore.config import PRESETS, RunConfig  # noqa: PLC0415
    from lmcore.training.distributed import connect  # noqa: PLC0415

    lmcore.set_num_threads(threads)
    cfg = RunConfig.from_dict({**PRESETS[preset], "lr_decay_iters": 1})
    group = connect()
    model = new_model(cfg, 65)
    rng = np.random.default_rng(0)
    b, t = cfg.batch_size, cfg.block_size
    model.reserve(b // group.size, t)
    times = []
    for step in range(WARMUP + steps):
        x, y = rng.integers(0, 65, (b, t)), rng.integers(0, 65, (b, t))
        if group.size > 1:
            group.comm.Barrier()  # each step timed from a common start
        t0 = time.perf_counter()
        group.step(model, x, y, 1e-3, None)
        if step >= WARMUP:
            times.append(time.perf_counter() - t0)
    result = {"ranks": group.size, "threads": lmcore.num_threads(), "params": model.num_params,
              "step_ms": 1e3 * float(np.median(times)), "batch": b, "block": t}
    if group.size > 1:  # the all-reduce alone, on the buffer a step reduces
        from mpi4py import MPI  # noqa: PLC0415
        buf = np.zeros(model.num_params + 2, dtype=np.float32)
        reduce_times = []
        for _ in range(reduces):
            group.comm.Barrier()
            t0 = time.perf_counter()
            group.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            reduce_times.append(time.perf_counter() - t0)
        result.update(allreduce_bytes=buf.nbytes, allreduce_ms=1e3 * float(np.median(reduce_times)))
    else:  # the compute alone: forward and backward of the whole batch
        comp = []
        for _ in range(steps):
            x, y = rng.integers(0, 65, (b, t)), rng.integers(0, 65, (b, t))
            t0 = time.perf_counter()
            model.compute_gradients(x, y)
            comp.append(time.perf_counter() - t0)
        result["compute_ms"] = 1e3 * float(np.median(comp))
        result["allreduce_bytes"] = (model.num_params + 2) * 4
    if group.is_root:
        print(json.dumps(result), flush=True)


def launch(cmd: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ring_ms(nbytes: int, hosts: int, gbit: float) -> float:
    """A ring all-reduce's time: 2(K-1)/K x bytes over the link's bandwidth (latency left out)."""
    return 1e3 * 2 * (hosts - 1) / hosts * nbytes / (gbit * 1e9 / 8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="medium")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reduces", type=int, default=20)
    p.add_argument("--no-netns", action="store_true", help="skip the namespaced-hosts measurement")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.preset, args.steps, args.reduces, args.threads)
        return
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", "--preset", args.preset,
          "--steps", str(args.steps), "--reduces", str(args.reduces)]
    mpirun = [str(BIN / "mpirun"), "-n", "2"]
    from lmcore.blas import cpu_name  # noqa: PLC0415 (lmcore is imported late here, as above)

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the start; "
          f"--{args.preset}, {args.steps} timed steps (median)")
    one = launch([*me, "--threads", "2"], dict(os.environ))
    two = launch([*mpirun, *me, "--threads", "1"], MPI_ENV)
    print(f"1 rank x {one['threads']} threads: {one['step_ms']:.1f} ms/step (forward+backward alone "
          f"{one['compute_ms']:.1f} ms); 2 ranks x {two['threads']} thread: {two['step_ms']:.1f} ms/step; "
          f"scaling efficiency {one['step_ms'] / two['step_ms']:.3f}")
    nbytes = two["allreduce_bytes"]
    print(f"all-reduced per step: {nbytes:,} bytes ({two['params']:,} float32 gradients, the loss, a stop flag); "
          f"all-reduce alone on one machine (shared memory): {two['allreduce_ms']:.2f} ms")
    if not args.no_netns:
        import netns_hosts  # noqa: PLC0415
        why = netns_hosts.unavailable()
        if why:
            print(f"namespaced hosts skipped: {why}")
        else:
            with netns_hosts.two_hosts() as hosts:
                cmd = hosts.in_first([*mpirun, *hosts.mpirun_options(), *me])
                # (No oversubscription there: the mapper would put both ranks on the first host.)
                tcp = launch([*cmd, "--threads", "1"], {k: v for k, v in MPI_ENV.items() if "rmaps" not in k})
            print(f"2 namespaced hosts over TCP (veth, 127.1.0.1 <-> 127.1.0.2): all-reduce {tcp['allreduce_ms']:.2f} ms "
                  f"({nbytes / tcp['allreduce_ms'] / 1e6:.2f} GB/s: each rank sends the whole buffer once), step {tcp['step_ms']:.1f} ms")
    # On paper: 16 hosts, each one rank of this machine's 2 threads on its share of a 16x larger
    # global batch (so compute per host as measured), the all-reduce not overlapped with backward.
    compute = one["step_ms"]
    rows = [(f"--{args.preset}", one["params"], compute)]
    hundred_m = 100_000_000
    rows.append(("100M parameters", hundred_m, compute * hundred_m / one["params"]))  # FLOPs ~ parameters
    print("16 hosts (ring all-reduce, step = compute + 2(K-1)/K x bytes / bandwidth, no overlap):")
    for name, params, comp in rows:
        b = (params + 2) * 4
        for gbit in (10, 100):
            ar = ring_ms(b, 16, gbit)
            print(f"  {name}: {b / 1e6:.1f} MB, {gbit} Gbit/s: compute {comp:.0f} ms + all-reduce {ar:.1f} ms = "
                  f"{comp + ar:.0f} ms/step, efficiency {comp / (comp + ar):.3f}")


if __name__ == "__main__":
    main()
