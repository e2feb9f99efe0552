"""The service's defences below the app, in uvicorn's h11 protocol: a deadline for each request's headers, a cap
on open connections, and JSON for the errors the server answers itself.

- A connection must send a request's headers within `header_timeout` seconds of opening, or of its last
  response (keep-alive). One that sends nothing, or drips its headers (slowloris), is closed when the deadline
  passes, so idle sockets cannot pile up.
- Over `max_connections` open connections, a new one may ask only for the reserved paths, /health and /metrics;
  anything else gets a JSON 503 with Retry-After. So a flood of sockets cannot deny the health check (uvicorn's
  `limit_concurrency` counted idle sockets and then refused every request, /health included). Over the hard
  ceiling (the file descriptors this process may open, less a margin), a new connection gets that 503 at once
  and is closed. The app bounds its own work besides (serve.py).
- uvicorn's own answer to a malformed request is JSON, like the app's errors.
Each close and refusal is counted (`edgeclf_connection_events_total{reason}` in /metrics).
"""
import json
import resource

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


RESERVED = ("/health", "/metrics")


def hard_ceiling(margin=64):
    """Open connections at most: the file descriptors this process may open, less a margin for its own files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft if soft != resource.RLIM_INFINITY else 65536) - margin)


def reserved_only(app, limit):
    """An ASGI app that answers only the reserved paths and a JSON 503 to everything else."""
    async def guarded(scope, receive, send):
        if scope["type"] != "http" or scope["path"] in RESERVED:
            return await app(scope, receive, send)
        body = json.dumps({"error": {"kind": "too_many_connections", "message": f"over {limit} open connections: only "
                                     f"{', '.join(RESERVED)} answer now; try again"}}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": body})
    return guarded


def json_response(status, reason, kind, message, retry_after=None):
    """The raw bytes of a complete HTTP/1.1 JSON error response that closes the connection."""
    body = json.dumps({"error": {"kind": kind, "message": message}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close"] + ([f"retry-after: {retry_after}"] if retry_after is not None else [])
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedH11(H11Protocol):
    header_timeout = 10.0  # seconds to send a request's headers, from the connection's start or its last response
    max_connections = 256  # beyond, the reserved paths only
    ceiling = 960  # beyond, refused at once (protocol_for() sets it from the descriptor limit)
    count = staticmethod(lambda reason: None)  # set by protocol_for(): counts closes and refusals

    def connection_made(self, transport):
        super().connection_made(transport)
        self._deadline = None
        open_now = len(self.connections)
        if open_now > self.ceiling:
            self.count("over_ceiling")
            transport.write(json_response(503, "Service Unavailable", "too_many_connections",
                                          f"over {self.ceiling} open connections; try again", retry_after=1))
            transport.close()
            return
        if open_now > self.max_connections:
            self.count("reserved_only")
            self.app = reserved_only(self.app, self.max_connections)
        self._arm()

    def _arm(self):
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self):
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self):
        self._deadline = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.count("header_timeout")  # nothing, or not all of a request's headers, within the deadline
            self.transport.close()

    def on_response_complete(self):
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc):
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg):
        self.count("bad_request")
        self.transport.write(json_response(400, "Bad Request", "bad_http", msg))
        self.transport.close()


def protocol_for(limits, count):
    """GuardedH11 with the service's limits, counting into `count(reason)`."""
    return type("ServiceH11", (GuardedH11,), {"header_timeout": limits.header_timeout,
                                               "max_connections": limits.max_connections,
                                               "ceiling": max(limits.max_connections, hard_ceiling()),
                                               "count": staticmethod(count)})


# ---------------------------------------------------------------- who may ask: hosts, origins, a token

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def allowed_hosts(bound, extra=()):
    """Host header names the service answers: the loopback names, the address it is bound to, and `extra`. Bound to
    every address (0.0.0.0), also this machine's name (and name.local) and its own addresses."""
    import socket

    names = set(LOCAL_NAMES) | {h.lower() for h in extra}
    if bound not in WILDCARDS:
        names.add(bound.lower())
    else:
        me = socket.gethostname().lower()
        names |= {me, f"{me}.local"}
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(me, None)}
        except OSError:
            pass
    return frozenset(names)


def _host_of(value):
    """The name in a Host header or an Origin's authority, without port or IPv6 brackets, lower case."""
    value = value.strip().lower()
    if "://" in value:
        value = value.split("://", 1)[1]
    value = value.split("/", 1)[0]
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    """ASGI middleware: the Host header must be an allowed name (DNS rebinding cannot reach the service through
    a name an attacker controls); a POST from a web page of another origin is refused (`Sec-Fetch-Site`, else
    `Origin`), so a page open anywhere on the network cannot submit a form to it; with a token, every POST must
    carry it (`Authorization: Bearer TOKEN`). Refusals are JSON and counted."""

    def __init__(self, app, hosts, token=None, count=lambda kind: None):
        self.app, self.hosts, self.token, self.count = app, hosts, token, count
        self.state = getattr(app, "state", None)  # the wrapped app's state (serve.py keeps the service there)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal:
                status, kind, message = refusal
                self.count(kind)
                body = json.dumps({"error": {"kind": kind, "message": message}}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                if status == 401:
                    headers.append((b"www-authenticate", b'Bearer realm="edgeclf"'))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def refusal(self, scope):
        """(status, kind, message) when the request is refused, else None."""
        import hmac

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = _host_of(headers.get("host", ""))
        if "*" not in self.hosts and host not in self.hosts:
            return 400, "host_not_allowed", f"Host {host[:100]!r} is not one this service answers (serve --allow-host)"
        if scope.get("method") != "POST":
            return None
        site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        if (site and site not in ("same-origin", "none")) or (
                not site and origin and origin != "null" and _host_of(origin) not in self.hosts and "*" not in self.hosts):
            return 403, "cross_site", "a request from a web page of another origin is refused"
        if self.token:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return 401, "unauthorized", "this service needs its token: Authorization: Bearer TOKEN"
        return None
