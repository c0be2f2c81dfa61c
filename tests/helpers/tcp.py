"""A small TCP forwarder for tests: makes a service that listens on 127.0.0.1 reachable
on another address (a bridge that network namespaces share), and can cut a connection
after a number of bytes (a link lost mid-request).

Between a client and the server, a forwarder keeps the server's side of a connection
alive whatever becomes of the client: with `dead_peer_seconds`, it ends a connection
whose client stopped answering for that long (keepalive probes while idle, the TCP
user timeout while data waits), as the server's own TCP would without a forwarder."""
from __future__ import annotations

import socket
import threading


class Forwarder:
    def __init__(self, listen_host: str, target: tuple[str, int], listen_port: int = 0,
                 cut_after_bytes: int | None = None, dead_peer_seconds: float | None = None):
        self.target = target
        self.cut_after_bytes = cut_after_bytes
        self.dead_peer_seconds = dead_peer_seconds
        self._server = socket.create_server((listen_host, listen_port), reuse_port=False)
        self._server.settimeout(0.2)
        self.address = self._server.getsockname()[:2]
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"forward-{self.port}")

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> "Forwarder":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            if self.dead_peer_seconds is not None:
                _end_when_silent(client, self.dead_peer_seconds)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, self.cut_after_bytes), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    sink.sendall(data[: max(0, limit - sent)])
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _end_when_silent(sock: socket.socket, seconds: float) -> None:
    """The kernel fails `sock` (its reads raise) once its peer has not answered for
    about `seconds`: a probe every second after a second of quiet, or unacknowledged
    data for that long."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, round(seconds) - 1))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(seconds * 1000))


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
