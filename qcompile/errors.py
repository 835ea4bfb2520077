"""Every error qcompile raises on purpose.

The CLI prints these as one clear line (no traceback) and exits non-zero.
Anything that is *not* a QCompileError is a bug in qcompile and keeps its traceback.
"""


class QCompileError(Exception):
    """Base class: a problem with the user's input or environment, explained."""


class ModelLoadError(QCompileError):
    """The model file is missing, unreadable, malformed, or could not be imported."""


class UnsupportedOpError(ModelLoadError):
    """The frontend has no conversion for an operator of the model."""

    def __init__(self, op_type: str, node_name: str = "", opset: int | None = None, source: str = "", hint: str = ""):
        self.op_type, self.node_name, self.opset = op_type, node_name, opset
        where = f" in {source}" if source else ""
        node = f" (node '{node_name}')" if node_name else ""
        ops = f" at opset {opset}" if opset is not None else ""
        msg = f"unsupported operator '{op_type}'{node}{ops}{where}"
        super().__init__(msg + (f": {hint}" if hint else ""))


class InputError(QCompileError):
    """Run/bench inputs do not match the model signature (name, shape, dtype, values)."""


class TargetError(QCompileError):
    """A target definition is missing or invalid."""


class ConfigError(QCompileError):
    """A configuration file (qconfig, pipeline) is invalid."""


class CalibrationError(QCompileError):
    """Calibration data is missing, empty, mis-shaped, or not finite."""


class ArtifactError(QCompileError):
    """A compiled artifact folder is missing, incomplete or from an incompatible build."""


class BuildError(QCompileError):
    """TVM failed to lower or build the module."""


class RemoteError(QCompileError):
    """A remote board, or the TVM RPC tracker/server in front of it, failed; the message names which."""


class TrackerUnreachableError(RemoteError):
    """No TVM RPC tracker (or RPC server) answers at the given HOST:PORT."""


class NoBoardError(RemoteError):
    """No board with the requested key became free within the timeout."""


class BoardLostError(RemoteError):
    """A board dropped the connection mid-run (it died or was stopped); another board may take over."""


class RemoteLoadError(RemoteError):
    """The board could not load the artifact's library."""


class SessionTimeoutError(RemoteError):
    """The RPC session expired (or stopped answering) before the run finished."""


class TargetMismatchError(RemoteError):
    """The artifact was compiled for a different architecture or CPU than the board has."""
