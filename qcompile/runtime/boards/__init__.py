"""Boards: target hardware reachable over TVM RPC, built or started by qcompile.

A real board (Raspberry Pi, Graviton) runs ``python -m tvm.exec.rpc_server --tracker HOST:PORT
--key KEY`` itself; qcompile then only talks to the tracker. The boards here are the ones
qcompile can *make* on an x86 machine, so CI can exercise the cross-compile -> upload ->
run path without hardware:

    qemu-aarch64  an arm64 Debian root + TVM's aarch64 wheels, run under qemu-user
                  (``qcompile board qemu-aarch64 --dir DIR``; see qemu_aarch64.py)

Timings measured on an emulated board are not performance numbers: qemu-user translates
every instruction, so it is tens of times slower than real hardware and its relative costs
differ too. Emulated boards register with keys that say so (``aarch64-qemu``).
"""

from ..rpc import is_emulated_key
from .qemu_aarch64 import DEFAULT_KEY as QEMU_AARCH64_KEY
from .qemu_aarch64 import QemuAarch64Board

BOARDS = {"qemu-aarch64": QemuAarch64Board}

# every emulated board's key ends in '-qemu' (is_emulated_key): timings through it are not hardware's

__all__ = ["BOARDS", "QemuAarch64Board", "QEMU_AARCH64_KEY", "is_emulated_key"]
