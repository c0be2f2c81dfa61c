"""gunicorn settings that `genq web` passes with `--config python:web.gunicorn_config`."""
from __future__ import annotations

from shared.processes import die_with_parent, freeze_heap


def post_fork(server, worker) -> None:
    """A web worker dies with its master, even when the master is killed outright."""
    die_with_parent(parent_pid=server.pid)


def post_worker_init(worker) -> None:
    """On SIGTERM (a graceful stop), end this worker's event streams first: each would
    otherwise hold the stop for the graceful timeout (web.events)."""
    import signal
    import threading

    from web.notice_hub import close_all_streams

    graceful = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):
        threading.Thread(target=close_all_streams, daemon=True).start()  # takes locks: not in the handler
        if callable(graceful):
            graceful(signum, frame)

    signal.signal(signal.SIGTERM, stop)
    freeze_heap()  # the app is loaded: full collections need not walk it again

# Long query strings and headers reach the app, which answers them with a JSON 400 (a
# request line of 0 means gunicorn's own cap, 1 MiB); gunicorn's defaults (8190 bytes)
# would answer an HTML 414 or 400 that no client of this API expects.
limit_request_line = 0
limit_request_field_size = 65536
