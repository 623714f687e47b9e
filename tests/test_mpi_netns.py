"""MPI across hosts, on one machine: two network namespaces joined by a veth pair with loopback-range
addresses (scripts/netns_hosts.py), one rank in each, the gradients over TCP on that link only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.numpy

from cli_helpers import ENV, requires_corpus
from mpi_helpers import MPI_ENV, mpirun_args, requires_mpi, train_args, worst_weight_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import netns_hosts  # noqa: E402

requires_netns = pytest.mark.skipif(netns_hosts.unavailable() is not None, reason=str(netns_hosts.unavailable()))
STEPS = ["--max-iters", "30", "--eval-interval", "30"]


@requires_mpi
@requires_corpus
@requires_netns
def test_two_namespaced_hosts_train_one_model_over_tcp(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(train_args(one, *STEPS), env=ENV, check=True, capture_output=True, timeout=300)
    with netns_hosts.two_hosts() as hosts:
        sent_before = hosts.tx_bytes(1)
        cmd = mpirun_args(2, *hosts.mpirun_options(), *train_args(two, *STEPS))
        # (Without the oversubscription settings, which let the mapper put both ranks on the first host.)
        env = {k: v for k, v in MPI_ENV.items() if "rmaps" not in k}
        proc = subprocess.run(hosts.in_first(cmd), env=env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        sent = hosts.tx_bytes(1) - sent_before
    a = safetensors.numpy.load_file(str(one / "model.safetensors"))
    b = safetensors.numpy.load_file(str(two / "model.safetensors"))
    assert worst_weight_error(a, b)[0] <= 1e-5, worst_weight_error(a, b)
    # The second host's rank sent its gradients (4 bytes per parameter and step) over the link.
    params = sum(t.size for t in a.values())
    assert sent >= 30 * params * 4, (sent, params)
