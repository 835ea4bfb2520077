"""Run an artifact on a board over RPC and bring the outputs back (``qcompile run``, remotely).

``qcompile bench --rpc-tracker`` times a board; this checks what it computes. It is how the
ARM targets are verified: the aarch64 library's outputs on the (emulated) board must be
bit-identical to the x86 build of the same model and qconfig, since both realize the same
integer arithmetic.

The flow is TVM's: request a board from the tracker, upload the library, load it remotely,
build a Relax VM on ``remote.cpu()``, and call ``main`` batch by batch.
"""

from __future__ import annotations

import gc
import os

import numpy as np


def run_remote(artifact, inputs, *, tracker: str, key: str, request_timeout: float = 120.0,
               session_timeout: float = 1200.0) -> dict[str, np.ndarray]:
    """Like ``artifact.run(inputs)``, but on a board of `key` from `tracker` ('HOST:PORT').

    A leading dimension that is a multiple of the model's batch size is run batch by batch,
    all in one session (one upload).
    """
    from ..rpc import Tracker, parse_endpoint

    ep = parse_endpoint(tracker, "tracker")
    with Tracker(ep) as t:
        board = t.request(key, request_timeout)
    remote = board.connect(session_timeout)
    try:
        return run_in_session(artifact, inputs, remote)
    finally:
        # The session (and so the board) is freed when its last reference goes. TVM calls can
        # leave reference cycles through frames that hold it; without a collection the board
        # would stay taken until Python's gc happens to run, and the next request would wait.
        remote = None  # noqa: F841
        gc.collect()


def run_in_session(artifact, inputs, remote) -> dict[str, np.ndarray]:
    """Upload `artifact`'s library into an open RPC session and run `inputs` through it."""
    import tvm
    from tvm import relax

    from ...artifact import _num_chunks
    from ...io import flatten_tensors

    if artifact.library_path is None or not os.path.isfile(artifact.library_path):
        from ...errors import ArtifactError

        raise ArtifactError("running on a board needs an artifact folder with its library (compile with -o DIR)")
    arrays = artifact.check_inputs(inputs)
    chunks = _num_chunks(artifact.inputs, arrays)
    name = os.path.basename(artifact.library_path)
    remote.upload(artifact.library_path, name)
    dev = remote.cpu()
    vm = relax.VirtualMachine(remote.load_module(name), dev)
    results = []
    for i in range(chunks):
        batch = [a[i * s.shape[0]:(i + 1) * s.shape[0]] if chunks > 1 else a for a, s in zip(arrays, artifact.inputs)]
        out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(b), dev) for b in batch])
        results.append([o.numpy() for o in flatten_tensors(out)])
    return {o.name: np.concatenate([r[k] for r in results], axis=0) if chunks > 1 else results[0][k]
            for k, o in enumerate(artifact.outputs)}
