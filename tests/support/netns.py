"""Hosts of a test network: one Linux network namespace per host, all on one bridge of their own.

Each host gets a veth pair: `eth0` with a 10.x address inside its namespace, the other end on the bridge.
The bridge has no address, so nothing is routed in or out: traffic stays between the namespaces. Names carry
a random tag (`ovt<tag>…`), so parallel runs and leftovers of a killed run never clash. `cleanup()` removes
every namespace, veth, bridge and iptables rule this object made; it also runs at exit, so a test that fails
(or an interpreter that stops) leaves nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def unavailable_reason() -> str | None:
    """Why this machine cannot make hosts (for a pytest skip), or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (iproute2, iptables)"
    return None


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


@dataclass
class Host:
    """One namespace: `address` is its eth0's, `veth` the bridge-side end of its link."""

    name: str
    namespace: str
    veth: str
    address: str
    _rules: list[list[str]] = field(default_factory=list)
    _probe: ThreadPoolExecutor | None = None

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside this host (`ip netns exec` execs it: the pid is the command's own)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def call(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` on a thread of this process that lives in this host's namespace: sockets it opens
        are this host's (a network namespace is a per-thread attribute; Python libraries that connect on the
        calling thread, such as requests, work there; gRPC, which connects on threads of its own, does not)."""
        if self._probe is None:
            self._probe = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{self.name}", initializer=self._enter)
        return self._probe.submit(function, *args).result()

    def _enter(self) -> None:
        with open(f"/run/netns/{self.namespace}") as handle:
            if ctypes.CDLL(None, use_errno=True).setns(handle.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.namespace}")

    def block(self, address: str) -> None:
        """Drop every packet between this host and `address` (iptables inside the namespace)."""
        for rule in (["OUTPUT", "-d", address, "-j", "DROP"], ["INPUT", "-s", address, "-j", "DROP"]):
            _run(*self.command("iptables", "-I", *rule))
            self._rules.append(rule)

    def unblock(self) -> None:
        while self._rules:
            _run(*self.command("iptables", "-D", *self._rules.pop()))


class Network:
    """A bridge and the hosts on it (see the module docstring)."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.bridge = f"ovt{self.tag}br"
        self.subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
        self.hosts: list[Host] = []
        self._forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        self._made_bridge = False
        self._forwarding = False
        self._lock = threading.Lock()
        atexit.register(self.cleanup)
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        _run("ip", "link", "set", self.bridge, "up")
        # after dockerd has run, FORWARD drops by default and bridged frames pass through iptables
        _run("iptables", "-I", *self._forward_rule)
        self._forwarding = True

    def add(self, name: str) -> Host:
        """A new host on the bridge, loopback and eth0 up."""
        index = len(self.hosts) + 1
        host = Host(name, f"ovt{self.tag}-{name}", f"ovt{self.tag}v{index}", f"{self.subnet}.{index + 1}")
        peer = f"ovt{self.tag}p{index}"
        _run("ip", "netns", "add", host.namespace)
        self.hosts.append(host)
        _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", host.namespace)
        _run("ip", "link", "set", host.veth, "master", self.bridge, "up")
        _run(*host.command("ip", "link", "set", "lo", "up"))
        _run(*host.command("ip", "link", "set", peer, "name", "eth0"))
        _run(*host.command("ip", "addr", "add", f"{host.address}/24", "dev", "eth0"))
        _run(*host.command("ip", "link", "set", "eth0", "up"))
        return host

    def cut(self, host: Host) -> None:
        """Pull the host's cable: its bridge-side veth goes down (no error reaches it: packets just vanish)."""
        _run("ip", "link", "set", host.veth, "down")

    def restore(self, host: Host) -> None:
        _run("ip", "link", "set", host.veth, "up")

    def cleanup(self) -> None:
        """Remove everything made (idempotent; errors of one step do not stop the others)."""
        with self._lock:
            while self.hosts:
                host = self.hosts.pop()
                if host._probe is not None:
                    host._probe.shutdown(wait=False)
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    host.unblock()
                # veths linger ~1 s after their namespace goes: delete them first, explicitly
                for command in (["ip", "link", "del", host.veth], ["ip", "netns", "del", host.namespace]):
                    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                        _run(*command)
            if self._made_bridge:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    _run("ip", "link", "del", self.bridge)
                self._made_bridge = False
            if self._forwarding:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    _run("iptables", "-D", *self._forward_rule)
                self._forwarding = False
