"""Run by tests/test_mpi.py, alone or under ``mpirun -n K``: float64 training steps through the
Python API (``lmcore.training.distributed``), the ranks' weights compared after every step; then one rank's
weight is nudged by one ulp, which the comparison must catch. Rank 0 saves the weights and losses
to ARGV[1] (.npz)."""

from __future__ import annotations

import sys

import numpy as np

import lmcore
from lmcore.training.distributed import RankError, connect

out, steps = sys.argv[1], int(sys.argv[2])
group = connect()
model = lmcore.Model(vocab_size=65, d_model=32, n_head=2, n_layer=2, block_size=16, seed=3, dtype="float64",
                     beta2=0.99, weight_decay=0.1, grad_clip=1.0)
rng = np.random.default_rng(0)  # the same global batches on every rank
losses = []
for step in range(1, steps + 1):
    x = rng.integers(0, 65, (8, 16))
    y = rng.integers(0, 65, (8, 16))
    loss, grad_norm, _ = group.step(model, x, y, 1e-3, None)
    group.check_weights(model, step)  # raises if the ranks differ
    losses.append((loss, grad_norm))
if group.is_root:
    np.savez(out, losses=np.array(losses), **{n: model.get_param(n) for n in model.param_names()})
if group.size > 1:
    if group.rank == group.size - 1:
        w = model.get_param("transformer.h.0.mlp.c_fc.weight")
        w[0, 0] = np.nextafter(w[0, 0], np.inf)
        model.set_param("transformer.h.0.mlp.c_fc.weight", w)
    try:
        group.check_weights(model, steps)
    except RankError as e:
        if group.is_root:
            print(f"caught: {e}", flush=True)
    else:
        sys.exit("a rank's changed weight went unnoticed")
