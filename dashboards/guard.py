"""What the dashboard's web server accepts before any callback runs: requests addressed to a host
name it serves (loopback names by default, so a page elsewhere cannot reach the job queue through
DNS rebinding), and bodies of bounded size (a 200 MB POST must not land in memory).

    guard_requests(app.server, allowed_hosts_for("127.0.0.1"))
"""

from __future__ import annotations

import logging
from typing import Iterable

from flask import Flask, request

log = logging.getLogger("workbench.dashboard")

MAX_REQUEST_BYTES = 8 * 2**20  # the largest request the pages send is a figure for export, well under this
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
ANY_INTERFACE = ("0.0.0.0", "::", "")


def allowed_hosts_for(host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The Host names a dashboard listening on `host` answers to: the loopback names, `host` itself
    and `extra`. None (any name) when it listens on every interface and no `extra` names are
    given: the user chose to expose it, and the names it is reached by are not known here."""
    extra = {h.strip().lower() for h in extra if h.strip()}
    if host in ANY_INTERFACE and not extra:
        return None
    return frozenset(LOOPBACK_NAMES | {host.strip("[]").lower()} | extra) - {"0.0.0.0", "::", ""}


def host_name(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8050" -> "::1", "Localhost:80" -> "localhost")."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.index("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def guard_requests(server: Flask, allowed_hosts: frozenset[str] | None, max_bytes: int = MAX_REQUEST_BYTES) -> None:
    """Refuse, before any callback runs, a request whose Host is not served here (403) and a body
    over `max_bytes` (413, also when a chunked body has no declared length)."""
    server.config["MAX_CONTENT_LENGTH"] = max_bytes

    @server.before_request
    def _guard():
        if allowed_hosts is not None and host_name(request.headers.get("Host", "")) not in allowed_hosts:
            log.warning("refused a request for host %r", request.headers.get("Host", "")[:100])
            return ("This dashboard answers only to " + ", ".join(sorted(allowed_hosts)) + ".\n", 403,
                    {"Content-Type": "text/plain; charset=utf-8"})
        length = request.content_length
        if length is not None and length > max_bytes:
            return (f"Request body of {length} bytes refused; the limit is {max_bytes}.\n", 413,
                    {"Content-Type": "text/plain; charset=utf-8", "Connection": "close"})
        return None
