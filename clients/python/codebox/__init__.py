"""Python client for codebox: stateful, isolated code-interpreter sessions.

    from codebox import Client

    client = Client("http://127.0.0.1:3874", token)
    with client.session("alice") as s:
        s.run("x = 41")
        print(s.run("x + 1").text)            # 42
        for event in s.stream("for i in range(3): print(i)"):
            print(event.type, event.text)

    s = client.create_session(memory_mb=2048, timeout=3600, metadata={"team": "research"})
    for info in client.sessions(metadata={"team": "research"}):
        print(info.session_id, info.expires_at)
    for env in client.environments():
        print(env.name, env.languages, env.seed)
    data = client.create_session(environment="data")   # an environment seeded with pandas

Standard library only; Python 3.9 or later.
"""

from ._client import Client, Environment, Event, FileEntry, InsecureTransportWarning, Result, Session, SessionInfo, Status
from ._errors import (
    AuthenticationError,
    BadRequestError,
    CodeboxError,
    CodeError,
    ConflictError,
    ForbiddenError,
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
    "ConflictError",
    "Environment",
    "Event",
    "ExecutionTimeoutError",
    "FileEntry",
    "ForbiddenError",
    "InsecureTransportWarning",
    "NotFoundError",
    "Result",
    "Session",
    "SessionInfo",
    "Status",
    "TooLargeError",
    "UnavailableError",
]

__version__ = "0.1.0"
