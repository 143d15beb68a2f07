"""The HTTP edge of metrics: `/metrics` (prometheus_client's exposition) and `/healthz`, on a thread of their own.

`serving` starts a threaded wsgiref server in a daemon thread for the block and
closes it when the block ends. `/metrics` is prometheus_client's `make_wsgi_app` over
the run's own registry; `/healthz` is answered here from the program's `Health`
(200 `ok`, or 503 and one line saying why). The server's threads only read: the
registry's values (thread-safe) and the health state (see orderpipe.core.health).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from orderpipe.core.health import Health
from orderpipe.errors import ConfigError

__all__ = ["health_app", "serving"]

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request, none of them holding the program open."""

    daemon_threads = True


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No line per request on stderr: a scrape every few seconds is not news."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def health_app(metrics: WsgiApp, health: Health) -> WsgiApp:
    """A WSGI app answering `/healthz` from `health` and everything else with `metrics`."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)
        healthy, line = health.check()
        body = f"{line}\n".encode()
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return app


@contextmanager
def serving(address: tuple[str, int], registry: CollectorRegistry, health: Health) -> Iterator[str]:
    """Serves `/metrics` and `/healthz` on `address` (port 0: any free one) for the block; yields the base URL.

    Raises:
        ConfigError: the address cannot be listened on (taken, or not this machine's), named with METRICS_PORT.
    """
    host, port = address
    server_class = _IPv6Server if ":" in host else _Server
    try:
        server = make_server(
            host, port, health_app(make_wsgi_app(registry), health), server_class, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise ConfigError(
            f"METRICS_PORT: cannot serve metrics on {_url(host, port)} ({exc.strerror or exc}); "
            "choose a free port, or leave it empty"
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="orderpipe-metrics", daemon=True)
    thread.start()
    try:
        yield _url(host, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
