"""Hosts on one machine: Linux network namespaces joined by veth pairs to a bridge that
the test creates and removes. Addresses are 10.213.<n>.0/24, used only inside this
machine. A host's link can be taken down and up again: a partition, not a kill (its
processes keep running)."""
from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass


class NamespacesUnavailable(Exception):
    """This machine does not let the test make namespaces, bridges or veth pairs."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, ["ip", *args], result.stdout, result.stderr)
    return result


@dataclass
class Host:
    name: str  # also its hostname (a UTS namespace of its own per process)
    namespace: str
    address: str
    link: str  # the host-side end of its veth pair, on the bridge

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host: its network namespace and its own hostname."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]

    def cut(self) -> None:
        ip("link", "set", self.link, "down")

    def reconnect(self) -> None:
        ip("link", "set", self.link, "up")


class Network:
    """A bridge with an address for the machine itself (services forwarded to it) and
    hosts on it. Everything is removed by `remove`, whatever state setup reached."""

    def __init__(self, host_names: list[str]):
        tag = uuid.uuid4().hex[:6]
        self.subnet = 10 + int(tag[:2], 16) % 240  # 10.213.<10..249>.0/24
        self.bridge = f"gqb{tag}"
        self.gateway = f"10.213.{self.subnet}.1"
        self.hosts = [Host(name, f"genq-{tag}-{name}", f"10.213.{self.subnet}.{11 + i}", f"gq{tag}{i}")
                      for i, name in enumerate(host_names)]
        self._made: list[tuple[str, ...]] = []  # undo commands, newest last

    def create(self) -> "Network":
        try:
            self._run(("link", "add", self.bridge, "type", "bridge"), ("link", "del", self.bridge))
        except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise NamespacesUnavailable(f"cannot create a bridge: {detail.strip()}") from None
        try:
            self._run(("addr", "add", f"{self.gateway}/24", "dev", self.bridge))
            self._run(("link", "set", self.bridge, "up"))
            for host in self.hosts:
                self._add_host(host)
        except subprocess.CalledProcessError as exc:
            self.remove()
            raise NamespacesUnavailable(f"{' '.join(exc.cmd)}: {exc.stderr.strip()}") from None
        return self

    def _add_host(self, host: Host) -> None:
        inside = f"{host.link}n"
        self._run(("netns", "add", host.namespace), ("netns", "del", host.namespace))
        self._run(("link", "add", host.link, "type", "veth", "peer", "name", inside), ("link", "del", host.link))
        self._run(("link", "set", inside, "netns", host.namespace))
        self._run(("link", "set", host.link, "master", self.bridge))
        self._run(("link", "set", host.link, "up"))
        self._run(("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inside))
        self._run(("-n", host.namespace, "link", "set", inside, "up"))
        self._run(("-n", host.namespace, "link", "set", "lo", "up"))

    def _run(self, args: tuple[str, ...], undo: tuple[str, ...] | None = None) -> None:
        ip(*args)
        if undo:
            self._made.append(undo)

    def remove(self) -> list[str]:
        """Kill what still runs in the namespaces, then undo every step; returns the
        steps that failed (a test asserts there are none)."""
        failures = []
        for host in self.hosts:
            pids = ip("netns", "pids", host.namespace, check=False).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
        while self._made:
            undo = self._made.pop()
            result = ip(*undo, check=False)
            if result.returncode != 0 and "Cannot find device" not in result.stderr:
                failures.append(f"ip {' '.join(undo)}: {result.stderr.strip()}")
        return failures

    def leftovers(self) -> list[str]:
        names = ip("netns", "list", check=False).stdout + ip("link", "show", check=False).stdout
        return [n for n in [self.bridge, *(h.namespace for h in self.hosts), *(h.link for h in self.hosts)] if n in names]
