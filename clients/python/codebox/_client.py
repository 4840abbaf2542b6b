"""The client: sessions, execute, streaming, files, over codeboxd's REST API (docs/API.md).

One HTTP connection per thread is kept open and reused; a Client may be shared by threads.
"""

import base64
import http.client
import ipaddress
import json
import os
import posixpath
import secrets
import select
import ssl
import threading
import urllib.parse
import warnings
from dataclasses import dataclass, field
from typing import IO, Any, Dict, Iterator, List, Optional, Union

from ._errors import CodeboxError, CodeError, error_for

# An event is at most this large (a display event holds a whole image), and a JSON answer
# (an execute's output is capped at a few MiB, escaped).
_MAX_EVENT = 64 << 20
_MAX_ANSWER = 64 << 20
# What download() holds in memory at most, unless asked for more.
DOWNLOAD_IN_MEMORY = 64 << 20
# How long a call may go without a byte from codeboxd (an execute's answer waits for its
# code; a stream sends a keep-alive every 15 s).
_DEFAULT_TIMEOUT = 360.0


@dataclass
class Result:
    """What an execute produced. error is set (and raise_for_error raises) when the code
    raised; the session keeps its state either way."""

    stdout: str = ""
    stderr: str = ""
    #: One dict per display or result: MIME type -> value (PNGs base64-encoded).
    results: List[Dict[str, Any]] = field(default_factory=list)
    #: stdout plus the text of the last expression, as the seed's result_text.
    text: Optional[str] = None
    error: Optional[Dict[str, Any]] = None
    execution_count: int = 0
    duration_ms: float = 0.0
    #: True when this call created the session: nothing defined before it exists.
    new_session: bool = False
    worker_id: str = ""
    #: When this call made the session in place of an ended one: {"ended_reason", "ended_at"}.
    previous_session: Optional[Dict[str, Any]] = None
    #: What the session's network policy denied while the call ran (the first 10: kind,
    #: name, ip, port, reason...), and how many it denied.
    network_denials: List[Dict[str, Any]] = field(default_factory=list)
    network_denials_total: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def images(self) -> List[bytes]:
        """The PNG images the call displayed (e.g. plt.show()), decoded."""
        return [base64.b64decode(r["image/png"]) for r in self.results if isinstance(r.get("image/png"), str)]

    def raise_for_error(self) -> "Result":
        """Raises CodeError when the code raised; returns the result otherwise."""
        if self.error is not None:
            raise CodeError(self)
        return self

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Result":
        return cls(
            stdout=d.get("stdout") or "",
            stderr=d.get("stderr") or "",
            results=d.get("results") or [],
            text=d.get("result_text"),
            error=d.get("error"),
            execution_count=d.get("execution_count") or 0,
            duration_ms=d.get("duration_ms") or 0.0,
            new_session=bool(d.get("new_session")),
            worker_id=d.get("worker_id") or "",
            previous_session=d.get("previous_session"),
            network_denials=d.get("network_denials") or [],
            network_denials_total=d.get("network_denials_total") or 0,
            raw=d,
        )


@dataclass
class SessionInfo:
    """A session as codeboxd shows it (docs/API.md#the-session-object): its shape, and for
    a running one read alone its usage; an ended one says why it ended."""

    session_id: str
    state: str
    environment: str = "default"
    worker_id: str = ""
    tenant: str = ""
    #: cpu, memory_mb, disk_mb, pids in force.
    limits: Dict[str, Any] = field(default_factory=dict)
    metadata: Dict[str, str] = field(default_factory=dict)
    env_names: List[str] = field(default_factory=list)
    created_at: str = ""
    last_activity_at: str = ""
    expires_at: Optional[str] = None
    idle_timeout: float = 0.0
    #: What its worker may reach: {"allow": [...]}.
    network: Dict[str, Any] = field(default_factory=dict)
    #: Reaches this session alone; only in the answer that created it.
    access_token: str = ""
    #: cpu_seconds, memory_bytes, memory_peak_bytes, disk_used_bytes, disk_total_bytes, processes.
    usage: Optional[Dict[str, Any]] = None
    ended_at: Optional[str] = None
    ended_reason: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "SessionInfo":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "raw"}
        return cls(**known, raw=d)


@dataclass
class Environment:
    """An environment (docs/ENVIRONMENTS.md): an image with its own warm pool, default
    limits and seed cells. pool (idle, busy, creating, min_idle, target_idle, max_total) is
    there for admin keys only."""

    name: str
    image: str = ""
    languages: List[str] = field(default_factory=list)
    limits: Dict[str, Any] = field(default_factory=dict)
    seed: bool = False
    available: bool = True
    unavailable_reason: str = ""
    pool: Optional[Dict[str, int]] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Environment":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "raw"}
        return cls(**known, raw=d)


@dataclass
class Event:
    """One event of a streamed call: stdout/stderr (text), display/result (data), error
    (ename, evalue, traceback), network (a denial of the session's network policy, as it
    happens), then exactly one done (status, state_preserved, network_denials, ...)."""

    type: str
    text: str = ""
    data: Dict[str, Any] = field(default_factory=dict)
    ename: str = ""
    evalue: str = ""
    traceback: List[str] = field(default_factory=list)
    status: str = ""
    state_preserved: bool = False
    execution_count: int = 0
    duration_ms: float = 0.0
    dropped_bytes: int = 0
    new_session: bool = False
    detail: str = ""
    network: Optional[Dict[str, Any]] = None
    network_denials: List[Dict[str, Any]] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Event":
        return cls(
            type=d.get("type", ""),
            text=d.get("text", ""),
            data=d.get("data") or {},
            ename=d.get("ename", ""),
            evalue=d.get("evalue", ""),
            traceback=d.get("traceback") or [],
            status=d.get("status", ""),
            state_preserved=bool(d.get("state_preserved")),
            network=d.get("network"),
            network_denials=d.get("network_denials") or [],
            execution_count=d.get("execution_count", 0),
            duration_ms=d.get("duration_ms", 0.0),
            dropped_bytes=d.get("dropped_bytes", 0),
            new_session=bool(d.get("new_session")),
            detail=d.get("detail", ""),
            raw=d,
        )


@dataclass
class FileEntry:
    name: str
    size: int
    type: str  # file, directory, symlink or other
    mtime: str


@dataclass
class Status:
    total_workers: int
    busy_workers: int
    idle_workers: int
    creating_workers: int
    min_idle_workers: int
    max_total_workers: int
    is_initializing: bool


class InsecureTransportWarning(UserWarning):
    """The client sends its token in cleartext to a host that is not this machine."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    """A codeboxd: its URL and API token (default: $AUTH_TOKEN). For https with a private
    CA, pass cafile (or a whole ssl_context)."""

    def __init__(self, url: str = "http://127.0.0.1:3874", token: Optional[str] = None, timeout: float = _DEFAULT_TIMEOUT,
                 cafile: Optional[str] = None, ssl_context: Optional[ssl.SSLContext] = None):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"url must be http(s)://host[:port], not {url!r}")
        self._https = u.scheme == "https"
        if not self._https and not _loopback(u.hostname):
            warnings.warn(f"codebox: the API token goes in cleartext to {u.hostname}; serve codeboxd over TLS "
                          "(--tls-cert) and use https://", InsecureTransportWarning, stacklevel=2)
        if (cafile or ssl_context) and not self._https:
            raise ValueError("cafile and ssl_context are for https:// URLs")
        self._ssl = ssl_context or (ssl.create_default_context(cafile=cafile) if self._https else None)
        self._host = u.hostname
        self._port = u.port
        self._base = u.path.rstrip("/")
        self.token = token if token is not None else os.environ.get("AUTH_TOKEN", "")
        self.timeout = timeout
        self._local = threading.local()

    def session(self, user_uuid: Optional[str] = None) -> "Session":
        """The session named user_uuid (1-128 of A-Z a-z 0-9 . _ -), or a new random one. It
        starts with its first call; `with client.session() as s:` releases it at the end."""
        return Session(self, user_uuid or "py-" + secrets.token_hex(8))

    def create_session(self, session_id: Optional[str] = None, *, environment: Optional[str] = None,
                       cpu: Optional[float] = None, memory_mb: Optional[int] = None, disk_mb: Optional[int] = None,
                       pids: Optional[int] = None, timeout: Optional[float] = None, idle_timeout: Optional[float] = None,
                       metadata: Optional[Dict[str, str]] = None, env: Optional[Dict[str, str]] = None,
                       allow: Optional[List[str]] = None, packages: bool = False,
                       from_snapshot: Optional[str] = None,
                       volumes: Optional[List[Dict[str, Any]]] = None) -> "Session":
        """Makes a session with a shape of its own (POST /api/v1/sessions): limits, a lifetime
        (timeout, seconds from now), an idle timeout, metadata to find it by, environment
        variables set before its first code, what it may reach on the network (allow: host
        names, *.suffix, addresses or CIDRs, each with an optional :port; none: nothing), and
        packages=True for the host's package cache (pip and npm install from it), and
        from_snapshot to start on a copy of a snapshot's disk (with its shape), volumes to
        mount ([{"name": ..., "path": "/sandbox/data", "read_only": False}]).
        Returns the Session; its info holds what codeboxd answered, the access_token (which
        reaches this session alone) included."""
        body: Dict[str, Any] = {}
        if session_id:
            body["session_id"] = session_id
        if environment:
            body["environment"] = environment
        limits = {k: v for k, v in (("cpu", cpu), ("memory_mb", memory_mb), ("disk_mb", disk_mb), ("pids", pids)) if v is not None}
        if limits:
            body["limits"] = limits
        for k, v in (("timeout", timeout), ("idle_timeout", idle_timeout), ("metadata", metadata), ("env", env)):
            if v is not None:
                body[k] = v
        if from_snapshot:
            body["from_snapshot"] = from_snapshot
        if volumes:
            body["volumes"] = list(volumes)
        if allow is not None or packages:
            body["network"] = {"allow": list(allow or [])}
            if packages:
                body["network"]["presets"] = ["packages"]
        info = SessionInfo.from_json(self._json("POST", "/api/v1/sessions", payload=body, ok=(201,)))
        s = Session(self, info.session_id)
        s.info = info
        return s

    def sessions(self, metadata: Optional[Dict[str, str]] = None, state: Optional[str] = None,
                 environment: Optional[str] = None, page_size: int = 100) -> Iterator[SessionInfo]:
        """The key's sessions (an admin key's: every tenant's) whose metadata holds every pair
        of metadata, oldest first; state is running (default), ended or all. Pages are
        fetched as the iteration goes."""
        query: Dict[str, str] = {"limit": str(page_size)}
        for k, v in (metadata or {}).items():
            query["metadata." + k] = v
        if state:
            query["state"] = state
        if environment:
            query["environment"] = environment
        while True:
            page = self._json("GET", "/api/v1/sessions", query)
            for d in page.get("sessions") or []:
                yield SessionInfo.from_json(d)
            token = page.get("next_page_token")
            if not token:
                return
            query["page_token"] = token

    def get_session(self, session_id: str) -> SessionInfo:
        """A session: running (with its usage) or ended (with ended_reason). NotFoundError
        when the key never had it, or it was forgotten."""
        return SessionInfo.from_json(self._json("GET", "/api/v1/sessions/" + urllib.parse.quote(session_id, safe="")))

    def update_session(self, session_id: str, *, timeout: Optional[float] = None, idle_timeout: Optional[float] = None,
                       metadata: Optional[Dict[str, str]] = None, cpu: Optional[float] = None,
                       memory_mb: Optional[int] = None, disk_mb: Optional[int] = None, pids: Optional[int] = None) -> SessionInfo:
        """Changes a running session (PATCH): timeout restarts its lifetime from now,
        metadata replaces its metadata, the limits apply at once (memory below what it uses
        raises ConflictError; the disk only grows)."""
        body: Dict[str, Any] = {}
        limits = {k: v for k, v in (("cpu", cpu), ("memory_mb", memory_mb), ("disk_mb", disk_mb), ("pids", pids)) if v is not None}
        if limits:
            body["limits"] = limits
        for k, v in (("timeout", timeout), ("idle_timeout", idle_timeout), ("metadata", metadata)):
            if v is not None:
                body[k] = v
        return SessionInfo.from_json(self._json("PATCH", "/api/v1/sessions/" + urllib.parse.quote(session_id, safe=""), payload=body))

    def set_network(self, session_id: str, allow: List[str], packages: bool = False) -> SessionInfo:
        """Replaces a running session's network policy: new connections follow at once,
        open ones it no longer allows are cut; packages=True keeps the package cache open."""
        policy: Dict[str, Any] = {"allow": list(allow)}
        if packages:
            policy["presets"] = ["packages"]
        return SessionInfo.from_json(self._json("PUT", "/api/v1/sessions/" + urllib.parse.quote(session_id, safe="") + "/network",
                                                payload=policy))

    def network_events(self, session_id: str, since: int = 0, limit: int = 100) -> Dict[str, Any]:
        """A session's network decisions from seq since on: {"events", "next_seq", "dropped"}."""
        return self._json("GET", "/api/v1/sessions/" + urllib.parse.quote(session_id, safe="") + "/network/events",
                          query={"since": str(since), "limit": str(limit)})

    def create_snapshot(self, session_id: str, snapshot_id: Optional[str] = None) -> Dict[str, Any]:
        """Snapshots a session's disk while it runs on (its disk frozen only for the copy):
        files and installed packages, with its shape; not its variables."""
        body = {"snapshot_id": snapshot_id} if snapshot_id else {}
        return self._json("POST", "/api/v1/sessions/" + urllib.parse.quote(session_id, safe="") + "/snapshots", payload=body, ok=(201,))

    def snapshots(self) -> List[Dict[str, Any]]:
        """The key's snapshots, oldest first."""
        return self._json("GET", "/api/v1/snapshots")["snapshots"]

    def get_snapshot(self, snapshot_id: str) -> Dict[str, Any]:
        return self._json("GET", "/api/v1/snapshots/" + urllib.parse.quote(snapshot_id, safe=""))

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Deletes a snapshot; sessions made from it keep their disks."""
        self._json("DELETE", "/api/v1/snapshots/" + urllib.parse.quote(snapshot_id, safe=""), ok=(204,))

    def fork(self, session_id: str, *session_ids: str) -> List["Session"]:
        """Makes 1 to 10 new sessions, each with its own copy of the session's disk as it is
        now and the session's shape."""
        d = self._json("POST", "/api/v1/sessions/" + urllib.parse.quote(session_id, safe="") + "/fork",
                       payload={"session_ids": list(session_ids)}, ok=(201,))
        out = []
        for info in d["sessions"]:
            s = Session(self, info["session_id"])
            s.info = SessionInfo.from_json(info)
            out.append(s)
        return out

    def create_volume(self, name: str, size_mb: int) -> Dict[str, Any]:
        """Makes a named volume: a disk that outlives sessions, mounted by create_session(volumes=...)."""
        return self._json("POST", "/api/v1/volumes", payload={"name": name, "size_mb": size_mb}, ok=(201,))

    def volumes(self) -> List[Dict[str, Any]]:
        """The key's volumes, with the sessions that have them."""
        return self._json("GET", "/api/v1/volumes")["volumes"]

    def get_volume(self, name: str) -> Dict[str, Any]:
        return self._json("GET", "/api/v1/volumes/" + urllib.parse.quote(name, safe=""))

    def delete_volume(self, name: str) -> None:
        """Deletes a volume no session has."""
        self._json("DELETE", "/api/v1/volumes/" + urllib.parse.quote(name, safe=""), ok=(204,))

    def delete_session(self, session_id: str) -> None:
        """Ends a session (DELETE): its worker, variables and files are destroyed."""
        self._json("DELETE", "/api/v1/sessions/" + urllib.parse.quote(session_id, safe=""), ok=(204,))

    def environments(self) -> List[Environment]:
        """The environments sessions can run in (create_session(environment=...)), the
        default first."""
        resp = self._request("GET", "/api/v1/environments", None, None, {}, auth=True, ok=(200,))
        return [Environment.from_json(e) for e in self._decode(self._read(resp), list)]

    def status(self) -> Status:
        d = self._json("GET", "/api/v1/status")
        return Status(**{k: d[k] for k in Status.__dataclass_fields__})

    def healthy(self) -> bool:
        """Whether codeboxd answers /healthz (it reaches containerd)."""
        try:
            self._json("GET", "/healthz", auth=False)
            return True
        except CodeboxError:
            return False

    def close(self) -> None:
        """Closes this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- HTTP

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            # A kept connection codeboxd closed while it was idle reads as ready (EOF):
            # found before a request is sent on it, never after.
            try:
                ready, _, _ = select.select([conn.sock], [], [], 0)
            except (OSError, ValueError):
                ready = [conn.sock]
            if ready:
                self.close()
                conn = None
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
            self._local.used = False
        return conn

    def _request(self, method: str, path: str, query: Optional[Dict[str, str]] = None, body: Any = None,
                 headers: Optional[Dict[str, str]] = None, auth: bool = True,
                 ok: tuple = (200, 201, 204)) -> http.client.HTTPResponse:
        """Sends a request; returns the answer, unread, when its status is in ok, else raises
        the error it says. The caller reads it, then hands it to _done."""
        url = self._base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        hdrs = dict(headers or {})
        if auth:
            hdrs["X-Auth-Token"] = self.token
        # Only a call that changes nothing twice is sent again when a kept connection
        # failed: an execute that may have reached codeboxd must not run twice.
        retryable = method == "GET" or path == "/api/v1/release"
        for attempt in (0, 1):
            conn = self._conn()
            reused = self._local.used
            try:
                conn.request(method, url, body=body, headers=hdrs, encode_chunked=hasattr(body, "read") and "Content-Length" not in hdrs)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt == 0 and reused and retryable:
                    continue
                raise CodeboxError(0, f"{method} {path}: {e!r}") from e
            self._local.used = True
            break
        if resp.status not in ok:
            raw = self._read(resp, 1 << 20, truncate=True)
            try:
                payload = json.loads(raw or b"{}")
            except ValueError:
                payload = {"detail": raw.decode("utf-8", "replace")[:1000]}
            if not isinstance(payload, dict):
                payload = {"detail": str(payload)[:1000]}
            raise error_for(resp.status, payload, resp.getheader("Retry-After"))
        return resp

    def _read(self, resp: http.client.HTTPResponse, limit: int = _MAX_ANSWER, truncate: bool = False) -> bytes:
        """Reads a whole answer of at most limit bytes (cut there, with truncate), then
        hands it back; a failure closes the connection, whose state is then unknown."""
        try:
            raw = resp.read(limit + 1)
            if len(raw) > limit:
                if not truncate:
                    raise CodeboxError(0, f"an answer over {limit} bytes")
                self.close()
                return raw[:limit]
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise CodeboxError(0, f"reading the answer: {e!r}") from e
        except CodeboxError:
            self.close()
            raise
        self._done(resp)
        return raw

    def _decode(self, raw: bytes, kind: type = dict) -> Any:
        try:
            d = json.loads(raw) if raw else kind()
        except ValueError as e:
            raise CodeboxError(0, f"an answer that is not JSON: {raw[:200]!r}") from e
        if not isinstance(d, kind):
            what = "an object" if kind is dict else "an array"
            raise CodeboxError(0, f"an answer that is not a JSON {what}: {raw[:200]!r}")
        if kind is list and not all(isinstance(x, dict) for x in d):
            raise CodeboxError(0, f"an answer that is not an array of objects: {raw[:200]!r}")
        return d

    def _done(self, resp: http.client.HTTPResponse) -> None:
        """Ends use of an answer: its connection is kept unless the answer said close."""
        if resp.will_close:
            self.close()

    def _json(self, method: str, path: str, query: Optional[Dict[str, str]] = None, payload: Any = None,
              ok: tuple = (200, 201, 204), auth: bool = True) -> Dict[str, Any]:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        resp = self._request(method, path, query, body, headers, auth=auth, ok=ok)
        return self._decode(self._read(resp))


class Session:
    """One codebox session: its variables, imports and files persist between calls."""

    def __init__(self, client: Client, user_uuid: str):
        self.client = client
        self.user_uuid = user_uuid
        #: What codeboxd said of the session when Client.create_session made it.
        self.info: Optional[SessionInfo] = None

    def __repr__(self) -> str:
        return f"Session({self.user_uuid!r})"

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _q(self, **extra: str) -> Dict[str, str]:
        return dict(user_uuid=self.user_uuid, **extra)

    @staticmethod
    def _body(code: str, language: Optional[str], timeout: Optional[float]) -> Dict[str, Any]:
        body: Dict[str, Any] = {"code": code}
        if language:
            body["language"] = language
        if timeout is not None:
            body["timeout"] = timeout
        return body

    def run(self, code: str, language: Optional[str] = None, timeout: Optional[float] = None) -> Result:
        """Runs code (python by default; javascript, typescript, bash) and returns what it
        produced. When the code raises, the Result has error set (raise_for_error raises).
        Raises ExecutionTimeoutError past timeout seconds, UnavailableError when no worker
        can be had or the worker died, BadRequestError for a request codeboxd refuses."""
        c = self.client
        body = json.dumps(self._body(code, language, timeout)).encode()
        resp = c._request("POST", "/api/v1/execute", self._q(), body, {"Content-Type": "application/json"}, ok=(200, 400))
        d = c._decode(c._read(resp))
        if resp.status == 400 and "error" not in d:  # refused, not raised
            raise error_for(400, d, None)
        return Result.from_json(d)

    def stream(self, code: str, language: Optional[str] = None, timeout: Optional[float] = None) -> Iterator[Event]:
        """Runs code and yields its events as they happen (server-sent events), the last one
        done. Leaving the loop early closes the connection, which interrupts the code."""
        c = self.client
        body = json.dumps(self._body(code, language, timeout)).encode()
        resp = c._request("POST", "/api/v1/execute", self._q(), body,
                          {"Content-Type": "application/json", "Accept": "text/event-stream"})
        finished = False
        try:
            ctype = resp.getheader("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                raise CodeboxError(resp.status, f"answer is {ctype!r}, not an event stream")
            data: List[bytes] = []
            size = 0
            while True:
                try:
                    line = resp.readline(_MAX_EVENT + 1)
                except (OSError, http.client.HTTPException) as e:
                    raise CodeboxError(0, f"reading the event stream: {e!r}") from e
                if not line:
                    raise CodeboxError(0, "the event stream ended before its done event")
                size += len(line)
                if size > _MAX_EVENT:
                    raise CodeboxError(0, "an event over 64 MiB")
                line = line.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
                elif not line and data:
                    ev = Event.from_json(c._decode(b"\n".join(data)))
                    data, size = [], 0
                    yield ev
                    if ev.type == "done":
                        finished = True
                        return
                # "event:" repeats the type the data holds; ":" lines are keep-alives.
        finally:
            if finished:
                try:
                    resp.read(1 << 16)  # the chunked stream's end, so the connection can be kept
                    c._done(resp)
                except (OSError, http.client.HTTPException):
                    c.close()
            else:
                c.close()

    def refresh(self) -> SessionInfo:
        """The session as codeboxd shows it now, with its usage (Client.get_session)."""
        return self.client.get_session(self.user_uuid)

    def extend(self, timeout: float) -> SessionInfo:
        """Restarts the session's lifetime: it ends timeout seconds from now."""
        return self.client.update_session(self.user_uuid, timeout=timeout)

    def snapshot(self, snapshot_id: Optional[str] = None) -> Dict[str, Any]:
        """Snapshots this session's disk (Client.create_snapshot)."""
        return self.client.create_snapshot(self.user_uuid, snapshot_id)

    def fork(self, *session_ids: str) -> List["Session"]:
        """New sessions from this one's disk as it is now (Client.fork)."""
        return self.client.fork(self.user_uuid, *session_ids)

    def release(self) -> None:
        """Ends the session: its worker, variables and files are destroyed (no error when
        there is no such session)."""
        self.client._json("POST", "/api/v1/release", self._q())

    # --- files (paths under /sandbox; relative ones are taken from /sandbox)

    @staticmethod
    def _path(p: str) -> str:
        return p if p.startswith("/") else "/sandbox/" + p

    def upload(self, path: str, data: Union[bytes, str, IO[bytes]]) -> int:
        """Stores data (bytes, text, or a binary file object, streamed) as the file at path,
        creating directories and the session if needed. Returns its size."""
        c = self.client
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(data, str):
            data = data.encode()
        if isinstance(data, (bytes, bytearray)):
            headers["Content-Length"] = str(len(data))
        resp = c._request("PUT", "/api/v1/files/content", self._q(path=self._path(path)), data, headers)
        return int(c._decode(c._read(resp)).get("size", 0))

    def download(self, path: str, to: Optional[Union[str, IO[bytes]]] = None,
                 max_bytes: int = DOWNLOAD_IN_MEMORY) -> Union[bytes, int]:
        """The file at path: its bytes (at most max_bytes: a larger file raises, and goes to
        a file with to), or, with to (a local path or a binary file object), written there in
        chunks, returning its size."""
        c = self.client
        resp = c._request("GET", "/api/v1/files/content", self._q(path=self._path(path)))
        if to is None:
            # The file is the tenant's: its size is whatever its code made it.
            size = resp.getheader("Content-Length")
            if size is not None and size.isdigit() and int(size) > max_bytes:
                c.close()
                raise CodeboxError(0, f"{path} has {size} bytes, more than max_bytes={max_bytes}: download it with to=")
            try:
                return c._read(resp, limit=max_bytes)
            except CodeboxError as e:
                raise CodeboxError(0, f"{path} is larger than max_bytes={max_bytes}: download it with to=") from e
        out = open(to, "wb") if isinstance(to, str) else to
        try:
            n = 0
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    c._done(resp)
                    return n
                out.write(chunk)
                n += len(chunk)
        except (OSError, http.client.HTTPException) as e:
            c.close()
            raise CodeboxError(0, f"downloading {path}: {e!r}") from e
        finally:
            if isinstance(to, str):
                out.close()

    def list(self, path: str = "/sandbox/") -> List[FileEntry]:
        """The entries of a directory, every page of them."""
        entries: List[FileEntry] = []
        offset = 0
        while True:
            q = self._q(path=self._path(path))
            if offset:
                q["offset"] = str(offset)
            d = self.client._json("GET", "/api/v1/files/list", q)
            entries += [FileEntry(e["name"], e["size"], e["type"], e.get("mtime", "")) for e in d.get("entries") or []]
            if not d.get("truncated"):
                return entries
            nxt = d.get("next_offset")
            if not isinstance(nxt, int) or nxt <= offset:  # a page that would repeat forever
                raise CodeboxError(0, f"a listing page with next_offset {nxt!r} after {offset}")
            offset = nxt

    def delete(self, *paths: str) -> None:
        """Deletes files; raises CodeboxError naming each that failed (the others are gone)."""
        files = []
        for p in paths:
            full = self._path(p)
            files.append({"path": posixpath.dirname(full) + "/", "name": posixpath.basename(full)})
        d = self.client._json("DELETE", "/api/v1/files", self._q(), {"files": files}, ok=(204, 207))
        if d.get("errors"):
            raise CodeboxError(207, "; ".join(f"{e['path']}{e['name']}: {e['detail']}" for e in d["errors"]), d)

    def import_files(self, files: List[Dict[str, str]]) -> List[Dict[str, Any]]:
        """Downloads URLs into the sandbox: files of {"download_url", "path", "name"}."""
        d = self.client._json("POST", "/api/v1/files", self._q(), {"files": files}, ok=(201, 207))
        if d.get("errors"):
            raise CodeboxError(207, "; ".join(f"{e['name']}: {e['detail']}" for e in d["errors"]), d)
        return d.get("results") or []

    def export_files(self, files: List[Dict[str, str]]) -> List[Dict[str, Any]]:
        """Uploads sandbox files to URLs (HTTP PUT): files of {"path", "name", "upload_url"}."""
        d = self.client._json("POST", "/api/v1/files/export", self._q(), {"files": files}, ok=(200, 207))
        if d.get("errors"):
            raise CodeboxError(207, "; ".join(f"{e['name']}: {e['detail']}" for e in d["errors"]), d)
        return d.get("results") or []
