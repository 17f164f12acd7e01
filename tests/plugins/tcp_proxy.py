"""A real TCP proxy in front of the live server, to cut connections mid-answer (resume tests).

def test_resume(proxy_factory, live_server):
    proxy = proxy_factory(live_server.base_url)   # connect to proxy.url instead
    ...
    proxy.cut()                                   # drop every open connection at once
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

__all__ = ["TcpProxy", "proxy_factory"]


class TcpProxy:
    """A real TCP forwarder in front of the live server; `cut()` drops every open connection at once.

    New connections keep working after a cut, so a client can reconnect through it.
    """

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source)
            self._drop(sink)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):  # already closed by the other side
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self) -> None:
        with self._lock:
            victims = list(self._sockets)
        for sock in victims:
            self._drop(sock)
        self.cuts += 1

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[str], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make(base_url: str) -> TcpProxy:
        proxy = TcpProxy(int(base_url.rsplit(":", 1)[1]))
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
