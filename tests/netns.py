"""Hosts of our own on this machine: network namespaces on one bridge, in a private range.

:class:`Hosts` creates one namespace per host (``ip netns``), a veth pair from each to a bridge in
the root namespace (which holds ``.1``, so the test process reaches every host directly), and
addresses in ``10.213.<n>.0/24`` only — a range nothing else here uses. :meth:`Hosts.cut` and
:meth:`Hosts.heal` take one host's link down and up (its root-side end: the host sees no carrier).
:meth:`Hosts.remove` deletes everything it created, by name; it is also registered with
``atexit``, so an interrupted run leaves nothing behind. Needs root and iproute2; when ``ip netns``
does not work, :class:`NetnsUnavailable` says why.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from dataclasses import dataclass, field

SUBNET_PREFIX = "10.213"


class NetnsUnavailable(RuntimeError):
    """``ip netns`` cannot be used here (no iproute2, not root, no namespace support)."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")


@dataclass
class Hosts:
    """Namespaces ``names`` on one bridge; ``address(name)`` is each one's IPv4 address."""

    names: tuple[str, ...]
    tag: str = field(default_factory=lambda: f"k{os.getpid() % 100_000}")
    subnet: int = field(default_factory=lambda: 100 + os.getpid() % 150)
    created_namespaces: list[str] = field(default_factory=list)
    created_links: list[str] = field(default_factory=list)

    def namespace(self, name: str) -> str:
        return f"mrsa-{self.tag}-{name}"

    def _index(self, name: str) -> int:
        return self.names.index(name)

    def _root_end(self, name: str) -> str:
        return f"{self.tag}v{self._index(name)}"  # interface names: at most 15 characters

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def gateway(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.1"

    def address(self, name: str) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.{10 + self._index(name)}"

    def launcher(self, name: str) -> tuple[str, ...]:
        """The command prefix that runs a program on host ``name`` (``ip netns exec`` execs it)."""
        return ("ip", "netns", "exec", self.namespace(name))

    def create(self) -> None:
        if shutil.which("ip") is None:
            raise NetnsUnavailable("iproute2's `ip` is not installed (make test installs it)")
        if os.geteuid() != 0:
            raise NetnsUnavailable(f"network namespaces need root (this test runs as uid {os.geteuid()})")
        atexit.register(self.remove)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self.created_links.append(self.bridge)
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for name in self.names:
                self._add_host(name)
        except BaseException:
            self.remove()
            raise

    def _add_host(self, name: str) -> None:
        ns, root_end, inner = self.namespace(name), self._root_end(name), f"{self._root_end(name)}i"
        _ip("netns", "add", ns)
        self.created_namespaces.append(ns)
        _ip("link", "add", root_end, "type", "veth", "peer", "name", inner)
        self.created_links.append(root_end)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", root_end, "master", self.bridge)
        _ip("link", "set", root_end, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")

    def cut(self, name: str) -> None:
        """Take host ``name`` off the network (nothing in or out) until :meth:`heal`."""
        _ip("link", "set", self._root_end(name), "down")

    def heal(self, name: str) -> None:
        _ip("link", "set", self._root_end(name), "up")

    def remove(self) -> None:
        """Delete the namespaces and links this object created (their processes must be gone)."""
        for ns in reversed(self.created_namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        for link in reversed(self.created_links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=20)
        self.created_namespaces.clear()
        self.created_links.clear()
