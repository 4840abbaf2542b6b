"""The exceptions the client raises: one per kind of answer a caller acts on differently."""

from typing import Any, Dict, Optional


class CodeboxError(Exception):
    """An answer other than success, or a failure to reach codeboxd.

    status is the HTTP status (0 when there was no answer), detail what codeboxd said,
    body the whole JSON answer.
    """

    def __init__(self, status: int, detail: str, body: Optional[Dict[str, Any]] = None):
        super().__init__(f"{status} {detail}" if status else detail)
        self.status = status
        self.detail = detail
        self.body = body or {}


class BadRequestError(CodeboxError):
    """400 or 422: the request cannot be carried out as asked (an unknown language, an empty
    code, a bad session id, a path outside /sandbox)."""


class AuthenticationError(CodeboxError):
    """401: a missing or wrong token."""


class NotFoundError(CodeboxError):
    """404: no such session or file. ended_reason says why a session ended, when known."""

    @property
    def ended_reason(self) -> Optional[str]:
        return self.body.get("ended_reason")


class ForbiddenError(CodeboxError):
    """403: refused by a rule (a key that is not an admin's, a session's access token used for
    what it may not do)."""


class ConflictError(CodeboxError):
    """409: the target is not what the call needs (a session of that id runs; memory below
    what the session uses)."""


class TooLargeError(CodeboxError):
    """413: a body or file over its limit."""


class UnavailableError(CodeboxError):
    """503: no worker can be had now (retry_after says when to come back), or the worker
    died during the call (files_kept says whether /sandbox survived)."""

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds to wait before trying again, when codeboxd said."""
        return self.body.get("_retry_after")

    @property
    def files_kept(self) -> Optional[bool]:
        return self.body.get("files_kept")

    @property
    def state_preserved(self) -> Optional[bool]:
        return self.body.get("state_preserved")


class ExecutionTimeoutError(CodeboxError):
    """504: the code ran past its time limit and was interrupted. state_preserved says
    whether the session kept its variables."""

    @property
    def state_preserved(self) -> Optional[bool]:
        return self.body.get("state_preserved")


class CodeError(CodeboxError):
    """The code raised (Result.raise_for_error): ename, evalue and traceback say what."""

    def __init__(self, result: "Any"):
        err = result.error or {}
        super().__init__(400, f"{err.get('ename')}: {err.get('evalue')}", {"error": err})
        self.result = result
        self.ename = err.get("ename")
        self.evalue = err.get("evalue")
        self.traceback = err.get("traceback") or []


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: TooLargeError,
    422: BadRequestError,
    503: UnavailableError,
    504: ExecutionTimeoutError,
}


def error_for(status: int, body: Dict[str, Any], retry_after: Optional[str]) -> CodeboxError:
    """The exception for a non-success answer."""
    detail = body.get("detail") if isinstance(body.get("detail"), str) else ""
    if retry_after:
        try:
            body = dict(body, _retry_after=float(retry_after))
        except ValueError:
            pass
    cls = _BY_STATUS.get(status, CodeboxError)
    return cls(status, detail or f"HTTP {status}", body)
