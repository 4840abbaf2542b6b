"""Python client for codebox: stateful, isolated code-interpreter sessions.

    from codebox import Client

    client = Client("http://127.0.0.1:3874", token)
    with client.session("alice") as s:
        s.run("x = 41")
        print(s.run("x + 1").text)            # 42
        for event in s.stream("for i in range(3): print(i)"):
            print(event.type, event.text)

Standard library only; Python 3.9 or later.
"""

from ._client import Client, Event, FileEntry, InsecureTransportWarning, Result, Session, Status
from ._errors import (
    AuthenticationError,
    BadRequestError,
    CodeboxError,
    CodeError,
    ExecutionTimeoutError,
    NotFoundError,
    TooLargeError,
    UnavailableError,
)

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "CodeError",
    "CodeboxError",
    "Event",
    "ExecutionTimeoutError",
    "FileEntry",
    "InsecureTransportWarning",
    "NotFoundError",
    "Result",
    "Session",
    "Status",
    "TooLargeError",
    "UnavailableError",
]

__version__ = "0.1.0"
