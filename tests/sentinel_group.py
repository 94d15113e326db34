"""A Redis master, its replica and ``redis-sentinel`` processes watching them, for failover tests.

On loopback by default; the multi-host test gives each process a network namespace's address and
an ``ip netns exec`` launcher. Everything it starts is stopped by PID in :meth:`SentinelGroup.stop`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from mrsa.servers.server_process import free_port
from testkit.redis_process import RedisProcess, answers_ping

MASTER_NAME = "mrsa-ha"
DOWN_AFTER_MS = 1000  # how long a silent master takes to be declared down


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class SentinelProcess:
    """One ``redis-sentinel`` with its own config file (Sentinel rewrites it)."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    launcher: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "sentinel.log"

    def start(self, master_host: str, master_port: int, quorum: int, timeout_s: float = 10.0) -> None:
        binary = shutil.which("redis-sentinel") or shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "neither redis-sentinel nor redis-server is installed (make test installs them)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind {self.host}\ndir {self.directory}\nprotected-mode no\n"
            f"sentinel monitor {MASTER_NAME} {master_host} {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        sentinel_flag = [] if binary.endswith("redis-sentinel") else ["--sentinel"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.launcher, binary, str(config), *sentinel_flag], stdout=log, stderr=subprocess.STDOUT
            )
        if answers_ping(self.host, self.port, self.process, timeout_s):
            return
        raise RuntimeError(
            f"redis-sentinel did not start on {self.host}:{self.port}:\n{_tail(self.log_path)}"
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, decode_responses=True, socket_timeout=2)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@dataclass
class SentinelGroup:
    """A master, one replica and ``sentinels`` Sentinels (quorum: a majority of them)."""

    directory: Path
    sentinels: int = 1
    redis_host: str = "127.0.0.1"
    sentinel_hosts: tuple[str, ...] = ()
    launcher: tuple[str, ...] = ()
    sentinel_launchers: tuple[tuple[str, ...], ...] = ()
    servers: list[RedisProcess] = field(default_factory=list)
    watchers: list[SentinelProcess] = field(default_factory=list)

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.watchers)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/{db}"

    def start(self) -> None:
        """Master, then the replica (synced), then the Sentinels (each has seen the replica)."""
        try:
            master = self._server("master", ())
            self._server("replica", ("--replicaof", master.host, str(master.port)))
            self._wait(self._synced, "the replica did not sync")
            for i in range(self.sentinels):
                host = self.sentinel_hosts[i] if self.sentinel_hosts else self.redis_host
                launcher = self.sentinel_launchers[i] if self.sentinel_launchers else self.launcher
                watcher = SentinelProcess(self.directory / f"sentinel{i}", host=host, launcher=launcher)
                self.watchers.append(watcher)
                watcher.start(master.host, master.port, quorum=self.sentinels // 2 + 1)
            self._wait(self._sentinels_ready, "the Sentinels did not see the replica and each other")
        except BaseException:
            self.stop()
            raise

    def _server(self, name: str, extra: tuple[str, ...]) -> RedisProcess:
        folder = self.directory / name
        folder.mkdir(parents=True, exist_ok=True)
        # Diskless sync waits 5 s by default for more replicas to share the transfer: none will.
        # A master told to stop waits up to 10 s (shutdown-timeout) for lagging replicas; the
        # tests stop servers in any order, so it must not.
        server = RedisProcess(
            folder,
            host=self.redis_host,
            launcher=self.launcher,
            fsync="everysec",
            extra_args=("--repl-diskless-sync-delay", "0", "--shutdown-timeout", "0", *extra),
        )
        self.servers.append(server)
        server.start()
        return server

    def _client(self, server: RedisProcess) -> redis.Redis:
        return redis.Redis(host=server.host, port=server.port, decode_responses=True, socket_timeout=2)

    def _synced(self) -> bool:
        with self._client(self.servers[1]) as replica:
            return str(replica.info("replication").get("master_link_status")) == "up"

    def _sentinels_ready(self) -> bool:
        for watcher in self.watchers:
            with watcher.client() as c:
                state = c.sentinel_master(MASTER_NAME)
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < self.sentinels - 1:
                    return False
        return True

    def master(self) -> tuple[str, int]:
        """The master's address as the first Sentinel that answers reports it."""
        for watcher in self.watchers:
            try:
                with watcher.client() as c:
                    host, port = c.sentinel_get_master_addr_by_name(MASTER_NAME)
                    return str(host), int(port)
            except redis.RedisError:
                continue
        raise RuntimeError("no Sentinel answers")

    def server_at(self, address: tuple[str, int]) -> RedisProcess:
        return next(s for s in self.servers if (s.host, s.port) == address)

    def failover(self, timeout_s: float = 20.0) -> tuple[str, int]:
        """``SENTINEL FAILOVER`` and wait until the old master runs as the new one's replica."""
        old = self.master()
        with self.watchers[0].client() as c:
            c.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        return self.wait_new_master(old, timeout_s)

    def wait_new_master(self, old: tuple[str, int], timeout_s: float = 20.0) -> tuple[str, int]:
        """The new master once the Sentinels report one other than ``old``, it takes writes, and
        ``old`` (when it still runs) is its replica."""
        found: list[tuple[str, int]] = []

        def promoted() -> bool:
            now = self.master()
            if now == old:
                return False
            with self._client(self.server_at(now)) as c:
                if c.info("replication").get("role") != "master":
                    return False
            old_server = self.server_at(old)
            if old_server.process is not None and old_server.process.poll() is None:
                with self._client(old_server) as c:  # a live old master: demoted too
                    if c.info("replication").get("role") != "slave":
                        return False
            found.append(now)
            return True

        self._wait(promoted, f"no failover away from {old}", timeout_s)
        return found[-1]

    def _wait(self, check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.1)
        logs = "\n".join(f"--- {p}\n{_tail(p)}" for p in self._logs())
        raise RuntimeError(f"{what} within {timeout_s} s; last log lines:\n{logs}")

    def _logs(self) -> list[Path]:
        return [s.log_path for s in self.servers] + [w.log_path for w in self.watchers]

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        for server in self.servers:
            server.stop()
