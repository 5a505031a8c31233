"""One error tree, one classification.

    BridgeError                      every error the bridge raises; carries a Classification
     ├── TerminalError               -32003  shell died, PTY failed, integration broken
     │    ├── ShellCrashed
     │    └── TerminalBusy           a command is already running there (the caller's)
     ├── FileSystemError             -32004  I/O errors; `.errno` kept
     │    ├── FileTooLarge
     │    └── ConflictError          expectedMtimeNs did not match (lost update refused)
     ├── NetworkError                         IPC transport failures (client side mostly)
     │    └── ConnectionLost
     ├── InternalError               -32603  a server bug (an unencodable result, a KeyError)
     ├── ParserError                          malformed frame, JSON or escape sequence
     │    ├── InvalidRequest         -32600
     │    ├── ParseError             -32700
     │    └── MessageTooLarge        -32007
     ├── InvalidParams               -32602
     ├── MethodNotFound              -32601
     ├── ResourceExhausted           -32005  memory pressure, queue or outbox full
     ├── BridgeTimeout               -32001
     ├── Unavailable                 -32002  circuit open, feature degraded
     ├── PermissionDenied            -32006  outside the workspace, bad token
     └── Cancelled                   -32800  never retried

Theory of operation: a classification is a property of an error *instance* (the same
OSError class is retryable for EAGAIN and not for ENOENT), so `BridgeError` takes it at
construction and `classify(exc)` derives one for any foreign exception: OSError by errno,
TimeoutError, CancelledError (by name, so this module needs no asyncio import). Exceptions are
translated once at each boundary with `raise BridgeError(...) from exc`. Cancellation and
KeyboardInterrupt are never retryable.

Whose fault: every classification also says whether the caller or the server is at fault
(`fault`). A caller's mistake (bad params, an unknown method, a path outside the workspace,
a missing file, a lost-update conflict, a busy terminal, a cancellation it asked for) would
fail the same way on any healthy server, so it never counts against the server's failure
rate, SLO, alerts or breakers (`is_server_fault`). Anything unexpected is the server's.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, ClassVar


class ErrorSeverity(StrEnum):
    CRITICAL = "critical"
    RECOVERABLE = "recoverable"
    WARNING = "warning"
    INFO = "info"


class Fault(StrEnum):
    CALLER = "caller"
    SERVER = "server"


class ErrorCategory(StrEnum):
    TERMINAL = "terminal"
    FILESYSTEM = "filesystem"
    NETWORK = "network"
    PARSER = "parser"
    RESOURCE = "resource"
    TIMEOUT = "timeout"
    USER_CANCELLED = "user_cancelled"


@dataclass(frozen=True, slots=True)
class Classification:
    category: ErrorCategory
    severity: ErrorSeverity
    retryable: bool
    fallback_available: bool
    fault: Fault = Fault.SERVER

    def to_wire(self, detail: str) -> dict[str, Any]:
        """The `data` member of a JSON-RPC error, as PROTOCOL.md names it (plus `fault`)."""
        return {
            "category": self.category.value,
            "severity": self.severity.value,
            "retryable": self.retryable,
            "fallbackAvailable": self.fallback_available,
            "fault": self.fault.value,
            "detail": detail,
        }


@dataclass(frozen=True, slots=True)
class ClassifiedError:
    """An exception together with how the recovery machinery should treat it."""

    error: BaseException
    classification: Classification

    @property
    def category(self) -> ErrorCategory:
        return self.classification.category

    @property
    def severity(self) -> ErrorSeverity:
        return self.classification.severity

    @property
    def retryable(self) -> bool:
        return self.classification.retryable

    @property
    def fallback_available(self) -> bool:
        return self.classification.fallback_available


def _c(
    category: ErrorCategory,
    severity: ErrorSeverity,
    retryable: bool,
    fallback: bool,
    fault: Fault = Fault.SERVER,
) -> Classification:
    return Classification(category, severity, retryable, fallback, fault)


_CALLER = Fault.CALLER


_CAT = ErrorCategory
_SEV = ErrorSeverity


class BridgeError(Exception):
    """Root of every error the bridge raises. `code` is the JSON-RPC error code."""

    code: ClassVar[int] = -32603
    default: ClassVar[Classification] = _c(_CAT.RESOURCE, _SEV.CRITICAL, False, False)

    def __init__(
        self,
        detail: str = "",
        *,
        classification: Classification | None = None,
        retryable: bool | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or type(self).__name__)
        cls = classification or type(self).default
        if retryable is not None:
            cls = replace(cls, retryable=retryable)
        self.classification = cls
        self.detail = detail or type(self).__name__
        self.data = data or {}

    def to_wire(self) -> dict[str, Any]:
        # `type` names the class, so a client rebuilds a ConflictError, not its -32004 parent.
        return {
            **self.data,
            **self.classification.to_wire(self.detail),
            "type": type(self).__name__,
        }


class TerminalError(BridgeError):
    code = -32003
    default = _c(_CAT.TERMINAL, _SEV.RECOVERABLE, True, True)


class ShellCrashed(TerminalError):
    default = _c(_CAT.TERMINAL, _SEV.CRITICAL, True, True)


class TerminalBusy(TerminalError):
    default = _c(_CAT.TERMINAL, _SEV.WARNING, False, True, _CALLER)


class FileSystemError(BridgeError):
    code = -32004
    default = _c(_CAT.FILESYSTEM, _SEV.RECOVERABLE, True, True)

    def __init__(self, detail: str = "", *, errno: int | None = None, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.errno = errno


class FileTooLarge(FileSystemError):
    default = _c(_CAT.FILESYSTEM, _SEV.WARNING, False, False, _CALLER)


class ConflictError(FileSystemError):
    default = _c(_CAT.FILESYSTEM, _SEV.WARNING, False, False, _CALLER)


class NetworkError(BridgeError):
    code = -32603
    default = _c(_CAT.NETWORK, _SEV.RECOVERABLE, True, True)


class ConnectionLost(NetworkError):
    pass


class InternalError(BridgeError):
    """The server failed in a way it did not foresee: its fault, whatever the cause."""

    code = -32603


class ParserError(BridgeError):
    code = -32700
    default = _c(_CAT.PARSER, _SEV.RECOVERABLE, False, True, _CALLER)


class ParseError(ParserError):
    code = -32700


class InvalidRequest(ParserError):
    code = -32600


class MessageTooLarge(ParserError):
    code = -32007
    default = _c(_CAT.PARSER, _SEV.WARNING, False, False, _CALLER)


class InvalidParams(BridgeError):
    code = -32602
    default = _c(_CAT.PARSER, _SEV.WARNING, False, False, _CALLER)


class MethodNotFound(BridgeError):
    code = -32601
    default = _c(_CAT.PARSER, _SEV.WARNING, False, False, _CALLER)


class ResourceExhausted(BridgeError):
    code = -32005
    default = _c(_CAT.RESOURCE, _SEV.RECOVERABLE, True, True)


class BridgeTimeout(BridgeError):
    code = -32001
    default = _c(_CAT.TIMEOUT, _SEV.RECOVERABLE, True, True)


class Unavailable(BridgeError):
    code = -32002
    default = _c(_CAT.RESOURCE, _SEV.WARNING, True, True)


class PermissionDenied(BridgeError):
    """Outside the workspace, a file the user may not touch: the request is refused."""

    code = -32006
    default = _c(_CAT.FILESYSTEM, _SEV.CRITICAL, False, False, _CALLER)


class AuthenticationFailed(PermissionDenied):
    """A TCP client without the right token: refused before it may do anything."""

    default = _c(_CAT.NETWORK, _SEV.CRITICAL, False, False, _CALLER)


class Cancelled(BridgeError):
    code = -32800
    default = _c(_CAT.USER_CANCELLED, _SEV.INFO, False, False, _CALLER)


# errno -> (severity, retryable, fallback). Transient faults (a busy or flaky disk, a
# network file system hiccup) are retried; faults the caller must fix are not.
_TRANSIENT_ERRNOS = frozenset(
    getattr(_errno, name)
    for name in (
        "EINTR", "EAGAIN", "EWOULDBLOCK", "EBUSY", "ETIMEDOUT", "ECONNRESET", "ECONNABORTED",
        "ECONNREFUSED", "EPIPE", "EIO", "ESTALE", "ENETDOWN", "ENETUNREACH", "EHOSTUNREACH",
        "ETXTBSY", "EDEADLK", "ENOLCK",
    )
    if hasattr(_errno, name)
)  # fmt: skip
_RESOURCE_ERRNOS = frozenset(
    getattr(_errno, n) for n in ("ENOMEM", "ENOSPC", "EMFILE", "ENFILE", "EDQUOT", "ENOBUFS")
    if hasattr(_errno, n)
)  # fmt: skip
_NETWORK_ERRNOS = frozenset(
    getattr(_errno, n)
    for n in ("ECONNRESET", "ECONNABORTED", "ECONNREFUSED", "EPIPE", "ENOTCONN", "ESHUTDOWN")
    if hasattr(_errno, n)
)
_PERMISSION_ERRNOS = frozenset({_errno.EACCES, _errno.EPERM, _errno.EROFS})

_CANCELLED = _c(_CAT.USER_CANCELLED, _SEV.INFO, False, False, _CALLER)


def classify_errno(err: int | None, *, socket: bool = False) -> Classification:
    """Classify an OSError by its errno. `socket=True` reads connection errnos as network."""
    if err is None:
        return _c(_CAT.FILESYSTEM, _SEV.RECOVERABLE, False, True)
    if err in _RESOURCE_ERRNOS:
        return _c(_CAT.RESOURCE, _SEV.CRITICAL, err in (_errno.EMFILE, _errno.ENFILE), True)
    if socket or err in _NETWORK_ERRNOS:
        return _c(_CAT.NETWORK, _SEV.RECOVERABLE, True, True)
    if err in _TRANSIENT_ERRNOS:
        return _c(_CAT.FILESYSTEM, _SEV.RECOVERABLE, True, True)
    if err in _PERMISSION_ERRNOS:
        return _c(_CAT.FILESYSTEM, _SEV.CRITICAL, False, False, _CALLER)
    # ENOENT, EISDIR, ENOTDIR, EEXIST, ENAMETOOLONG, ELOOP ...: the request is wrong.
    return _c(_CAT.FILESYSTEM, _SEV.WARNING, False, False, _CALLER)


def error_type(name: object) -> type[BridgeError] | None:
    """The `BridgeError` subclass a wire `type` names (None when it names none)."""
    pending: list[type[BridgeError]] = [BridgeError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending.extend(cls.__subclasses__())
    return None


def is_server_fault(exc: BaseException) -> bool:
    """Whether `exc` counts against the server (failure rate, SLO, alerts, breakers)."""
    return _classification_of(exc).fault is Fault.SERVER


def classify(exc: BaseException) -> ClassifiedError:
    """Map any exception to a classification; never raises."""
    return ClassifiedError(exc, _classification_of(exc))


def _classification_of(exc: BaseException) -> Classification:
    if isinstance(exc, BridgeError):
        return exc.classification
    name = type(exc).__name__
    if name == "CancelledError" or isinstance(exc, KeyboardInterrupt | GeneratorExit):
        return _CANCELLED
    if isinstance(exc, TimeoutError):  # before OSError: TimeoutError subclasses it
        return BridgeTimeout.default
    if isinstance(exc, ConnectionError | EOFError):
        return NetworkError.default
    if isinstance(exc, OSError):
        return classify_errno(exc.errno)
    if isinstance(exc, MemoryError):
        return _c(_CAT.RESOURCE, _SEV.CRITICAL, False, True)
    if isinstance(exc, UnicodeError | ValueError | TypeError | KeyError):
        return _c(_CAT.PARSER, _SEV.RECOVERABLE, False, True)  # raised by our code: ours
    if isinstance(exc, SystemExit):
        return _c(_CAT.RESOURCE, _SEV.CRITICAL, False, False)
    return _c(_CAT.RESOURCE, _SEV.CRITICAL, False, False)


def to_bridge_error(exc: BaseException, detail: str | None = None) -> BridgeError:
    """Translate a foreign exception into the tree (a BridgeError is returned unchanged)."""
    if isinstance(exc, BridgeError):
        return exc
    cls = _classification_of(exc)
    text = detail or f"{type(exc).__name__}: {exc}"
    kind: type[BridgeError]
    if cls.category is _CAT.USER_CANCELLED:
        kind = Cancelled
    elif cls.category is _CAT.TIMEOUT:
        kind = BridgeTimeout
    elif isinstance(exc, OSError) and exc.errno in _PERMISSION_ERRNOS:
        kind = PermissionDenied
    elif cls.category is _CAT.RESOURCE and isinstance(exc, OSError | MemoryError):
        kind = ResourceExhausted
    elif cls.category is _CAT.NETWORK:
        kind = ConnectionLost
    elif isinstance(exc, OSError):
        err = FileSystemError(text, errno=exc.errno, classification=cls)
        return err
    else:
        # A ValueError, KeyError or TypeError escaping a handler is a bug of the server's,
        # never the caller's bad params: those are refused as InvalidParams where checked.
        kind = InternalError
    return kind(text, classification=cls)
