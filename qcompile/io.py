"""Small file helpers every layer may use: reading .npz inputs, atomic writes, TVM outputs as a list.

Atomic: a result is written to a temporary file in the destination folder and renamed into place,
so a crash or an error never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile

from .errors import InputError


def load_npz(path: str) -> dict:
    """{key: array} of an .npz file; a missing or unreadable file is an InputError naming it."""
    import zipfile

    import numpy as np

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such inputs file")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz file ({err})") from None


def _write_atomic(path: str, suffix: str, mode: str, write):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=d)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz_atomic(path: str, arrays: dict):
    import numpy as np

    _write_atomic(path, ".npz", "wb", lambda f: np.savez(f, **arrays))


def write_json_atomic(path: str, obj):
    _write_atomic(path, ".json", "w", lambda f: json.dump(obj, f, indent=2))


def flatten_tensors(out) -> list:
    """A Relax VM result (a tensor, or nested tuples of them) as a flat list of tensors."""
    import tvm

    if isinstance(out, tvm.runtime.Tensor):
        return [out]
    flat = []
    for o in out:
        flat.extend(flatten_tensors(o))
    return flat
