"""The server deployed on several hosts, each a network namespace on one bridge, and the network failing.

A Redis host, two api hosts, three worker hosts and a client host (tests.support.netns), the `ovms` roles
run as README "Running distributed" says, serving only `digits` (2 cores in all). The client host runs
tests.support.host_client; every answer is checked against the model run here with OpenVINO. Each test
prints a `hosts:` line with its figures. Select with `pytest -m hosts`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import requests

from tasks.heartbeat import HEARTBEAT_TTL_S
from tests.support.netns import Host, Network, unavailable_reason
from tests.support.stack import GRPC_READY, REPO, REST_READY, OvmsProcess, live_workers, ovms_command

pytestmark = [
    pytest.mark.hosts,
    pytest.mark.skipif(unavailable_reason() is not None, reason=f"no test network: {unavailable_reason()}"),
    pytest.mark.timeout(240),
]

GRPC_PORT, REST_PORT, REDIS_PORT = 9000, 8000, 6379
ENV = {"PYTHONPATH": str(REPO)}
RERUN = "again: worker"  # an api logs each message it publishes again after its worker was lost (tasks.dispatcher)


@dataclass
class Cluster:
    network: Network
    started: list[OvmsProcess]  # every process on the hosts, clients included: the fixture stops them all
    apis: list[OvmsProcess]
    api_hosts: list[Host]
    workers: list[OvmsProcess]
    worker_hosts: list[Host]
    client: Host
    redis_address: str
    logs: Path

    def targets(self, apis: list[OvmsProcess] | None = None) -> list[str]:
        """gRPC and REST of each api (all by default), as host_client takes them."""
        return [t for a in apis or self.apis for t in (f"grpc:{a.grpc_address}", f"rest:{a.rest_url}")]

    def live_workers(self) -> list[int]:
        """How many live workers each api counts, asked from the client host."""
        return [self.client.call(live_workers, api) for api in self.apis]

    def wait_for_live_workers(self, count: int, timeout_s: float = 30.0) -> float:
        """Until every api counts `count` live workers; the time it took."""
        start = time.monotonic()
        while self.live_workers() != [count] * len(self.apis):
            assert time.monotonic() - start < timeout_s, f"apis count {self.live_workers()} live workers, not {count}"
            time.sleep(0.05)
        return time.monotonic() - start


class ClientRun:
    """tests.support.host_client running on the client host; its outcomes read back as they are written."""

    def __init__(self, cluster: Cluster, targets: list[str], threads: int = 4, timeout_s: float = 20, count: int = 0):
        self.out = cluster.logs / f"client-{time.monotonic_ns()}.jsonl"
        self.out.touch()
        argv = [sys.executable, "-m", "tests.support.host_client", "--out", str(self.out), "--threads", str(threads)]
        argv += ["--timeout", str(timeout_s), "--count", str(count)]
        argv += [arg for target in targets for arg in ("--target", target)]
        self.process = OvmsProcess(cluster.client.command(*argv), 0, 0, [], env=ENV)
        cluster.started.append(self.process)

    def outcomes(self) -> list[dict]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.endswith("}")]

    def wait(self, condition: Callable[[list[dict]], bool], timeout_s: float = 30.0) -> float:
        """Until `condition(outcomes)` holds; the monotonic time it did."""
        deadline = time.monotonic() + timeout_s
        while not condition(self.outcomes()):
            assert time.monotonic() < deadline, (
                f"client: condition not met in {timeout_s} s\n{self.process.log()[-2000:]}"
            )
            assert self.process.process.poll() is None, f"client exited:\n{self.process.log()[-2000:]}"
            time.sleep(0.05)
        return time.monotonic()

    def stop(self) -> list[dict]:
        self.process.stop()
        return self.outcomes()

    def finish(self, timeout_s: float = 60.0) -> list[dict]:
        """Wait for a run with a `count` to end by itself."""
        self.process.process.wait(timeout=timeout_s)
        return self.stop()


def _start(host: Host, argv: list[str], grpc_port: int = 0, rest_port: int = 0) -> OvmsProcess:
    """`argv` started on `host` (not awaited: the caller waits for its log lines)."""
    return OvmsProcess(host.command(*argv), grpc_port, rest_port, [], env=ENV, host=host.address)


@pytest.fixture(scope="module")
def cluster(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("hosts")
    config = logs / "config.json"
    config.write_text(
        json.dumps({"model_config_list": [{"config": {"name": "digits", "base_path": str(models_dir / "digits")}}]})
    )
    network = Network()
    started: list[OvmsProcess] = []
    try:
        redis_host = network.add("redis")
        api_hosts = [network.add(f"api{i}") for i in (1, 2)]
        worker_hosts = [network.add(f"worker{i}") for i in (1, 2, 3)]
        client = network.add("client")
        broker = f"redis://{redis_host.address}:{REDIS_PORT}/0"
        redis_argv = ["/usr/bin/redis-server", "--bind", redis_host.address, "--port", str(REDIS_PORT)]
        redis_argv += ["--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", str(logs)]
        redis = _start(redis_host, redis_argv)
        started.append(redis)
        redis.wait_for_log("Ready to accept connections")
        common = ["--config_path", str(config), "--broker_url", broker]
        workers = [
            _start(host, ovms_command("worker", *common, "--device", "CPU", "--worker_concurrency", "8"))
            for host in worker_hosts
        ]
        started += workers
        apis = [
            _start(
                host,
                ovms_command("api", *common, "--port", str(GRPC_PORT), "--rest_port", str(REST_PORT)),
                GRPC_PORT,
                REST_PORT,
            )
            for host in api_hosts
        ]
        started += apis
        for worker in workers:
            worker.wait_for_log("is ready")
        for api in apis:
            api.wait_for_log(GRPC_READY, REST_READY)
        cluster = Cluster(network, started, apis, api_hosts, workers, worker_hosts, client, redis_host.address, logs)
        cluster.wait_for_live_workers(3)
        yield cluster
    finally:
        for process in reversed(started):
            process.stop(timeout_s=10)
        network.cleanup()


@pytest.fixture(scope="module")
def expected(models_dir: Path) -> np.ndarray:
    """digits' probabilities for every test image, from the model run here."""
    images = np.load(models_dir / "data" / "imgs.npy")
    model = ov.Core().compile_model(str(models_dir / "digits" / "1" / "model.xml"), "CPU")
    return model(images)[0]


def _wrong(outcomes: list[dict], expected: np.ndarray) -> list[dict]:
    """Answers that are not the model's for the row the request sent."""
    return [
        o for o in outcomes if o["code"] == "OK" and not np.allclose(o["probabilities"], expected[o["row"]], atol=1e-5)
    ]


def _failed(outcomes: list[dict]) -> list[tuple]:
    return [(o["target"], o["code"], round(o["finished"] - o["started"], 2)) for o in outcomes if o["code"] != "OK"]


def _served_by(outcomes: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome["code"] == "OK":
            counts[outcome["worker"]] = counts.get(outcome["worker"], 0) + 1
    return counts


def _readiness(api: OvmsProcess) -> int:
    return requests.get(f"{api.rest_url}/v1/health/ready", timeout=5).status_code


def _tails(*processes: OvmsProcess) -> str:
    """The ends of the processes' logs, headed by their namespace, for assertion messages."""
    return "\n".join(f"--- {p.process.args[3]}\n{p.log()[-1500:]}" for p in processes)


def _count(processes: list[OvmsProcess], line: str) -> int:
    """How many times `line` occurs in the processes' logs so far."""
    return sum(process.log().count(line) for process in processes)


def _reaches(host: Host, address: str, port: int) -> bool:
    """Whether `host` can open a TCP connection to address:port within 1 s."""

    def connect() -> bool:
        try:
            socket.create_connection((address, port), timeout=1).close()
        except OSError:
            return False
        return True

    return host.call(connect)


def test_the_network_connects_its_hosts_only_and_cleanup_leaves_nothing():
    """The plumbing the other tests stand on: hosts reach each other (not the machine), a cut or a block
    separates them, restoring joins them again, and cleanup removes every namespace, veth, bridge and rule."""
    network = Network()
    try:
        server, client = network.add("server"), network.add("client")
        listener = server.call(socket.create_server, (server.address, 7000))
        assert _reaches(client, server.address, 7000)
        with socket.create_server(("127.0.0.1", 0)) as outside:  # the machine's loopback is not a host's
            assert not _reaches(client, "127.0.0.1", outside.getsockname()[1])
        network.cut(server)
        assert not _reaches(client, server.address, 7000)
        network.restore(server)
        assert _reaches(client, server.address, 7000)
        client.block(server.address)
        assert not _reaches(client, server.address, 7000)
        client.unblock()
        assert _reaches(client, server.address, 7000)
        listener.close()
    finally:
        network.cleanup()
    leftovers = [
        subprocess.run(command, capture_output=True, text=True, check=True).stdout
        for command in (["ip", "netns", "list"], ["ip", "link", "show"], ["iptables", "-S", "FORWARD"])
    ]
    assert not [line for text in leftovers for line in text.splitlines() if f"ovt{network.tag}" in line]


def test_both_api_hosts_answer_grpc_and_rest_from_the_client_host(cluster: Cluster, expected: np.ndarray):
    outcomes = ClientRun(cluster, cluster.targets(), threads=2, count=40).finish()
    by_target: dict[str, int] = {}
    for outcome in outcomes:
        by_target[outcome["target"]] = by_target.get(outcome["target"], 0) + (outcome["code"] == "OK")
    print(f"hosts: answered per api and protocol {by_target}")
    assert len(outcomes) == 40 and not _failed(outcomes), _failed(outcomes)
    assert set(by_target) == set(cluster.targets()) and all(n == 10 for n in by_target.values()), by_target
    assert not _wrong(outcomes, expected)


def test_work_spreads_over_the_three_worker_hosts(cluster: Cluster, expected: np.ndarray):
    run = ClientRun(cluster, cluster.targets(), threads=6)
    try:
        run.wait(lambda outcomes: len(outcomes) >= 300 and len(_served_by(outcomes)) == 3, timeout_s=30)
    finally:
        outcomes = run.stop()
    print(f"hosts: {len(outcomes)} requests served by worker {_served_by(outcomes)}")
    assert not _failed(outcomes) and not _wrong(outcomes, expected)
    assert set(_served_by(outcomes)) == {worker.worker_id() for worker in cluster.workers}  # none unnamed


@dataclass
class Partition:
    """What the client host saw while one worker host was cut off for twice the heartbeat's lifetime, then back."""

    outcomes: list[dict]
    detected_s: float  # cut -> every api counts the worker lost
    caught: int  # requests held up by the cut: held by the worker, or sent to it by Redis into the cut
    reruns: int  # messages the apis published again
    moved_s: float  # cut -> every request sent before the loss was noticed answered
    slowest_s: float
    down_s: float
    rejoined_s: float  # link back -> every api counts the worker live
    serves_s: float  # link back -> the worker answers a new request
    late: int  # answers from the worker while it was cut off

    def report(self, what: str, expected: np.ndarray) -> str:
        return (
            f"hosts: {what}: {len(self.outcomes)} requests, {len(_failed(self.outcomes))} failed, "
            f"{len(_wrong(self.outcomes, expected))} wrong; apis counted it lost {self.detected_s:.2f} s after the "
            f"cut, {self.caught} requests caught by the cut, {self.reruns} messages run again, every request sent "
            f"before that answered {self.moved_s:.2f} s after the cut (slowest {self.slowest_s:.2f} s); back after "
            f"{self.down_s:.1f} s: counted live after {self.rejoined_s:.2f} s, serving again after "
            f"{self.serves_s:.2f} s; served by worker {_served_by(self.outcomes)}"
        )


def _partition(
    cluster: Cluster, victim: OvmsProcess, cut: Callable[[], None], restore: Callable[[], None]
) -> Partition:
    """Under load through both apis (gRPC and REST), cut a worker host off for twice the heartbeat's lifetime."""
    victim_id = victim.worker_id()
    reruns_before = _count(cluster.apis, RERUN)
    run = ClientRun(cluster, cluster.targets(), threads=8)
    try:
        run.wait(lambda outcomes: victim_id in _served_by(outcomes) and len(outcomes) > 100)
        cut_at = time.monotonic()
        cut()
        detected_s = cluster.wait_for_live_workers(2, timeout_s=HEARTBEAT_TTL_S + 5)
        time.sleep(max(0.0, 2 * HEARTBEAT_TTL_S - (time.monotonic() - cut_at)))
        restored = time.monotonic()
        restore()
        rejoined_s = cluster.wait_for_live_workers(3, timeout_s=30)
        serves = run.wait(lambda outcomes: any(o["worker"] == victim_id and o["started"] > restored for o in outcomes))
        time.sleep(2)  # its stale messages run by now
    finally:
        restore()
        outcomes = run.stop()
    around_cut = [o for o in outcomes if o["finished"] > cut_at and o["started"] < cut_at + detected_s]
    latencies = [o["finished"] - o["started"] for o in around_cut]
    return Partition(
        outcomes,
        detected_s,
        caught=sum(latency > 1 for latency in latencies),
        reruns=_count(cluster.apis, RERUN) - reruns_before,
        moved_s=max(o["finished"] for o in around_cut) - cut_at,
        slowest_s=max(latencies),
        down_s=restored - cut_at,
        rejoined_s=rejoined_s,
        serves_s=serves - restored,
        late=sum(o["worker"] == victim_id and cut_at + 0.5 < o["finished"] < restored for o in outcomes),
    )


def _assert_every_request_answered_once_and_right(partition: Partition, expected: np.ndarray, tails: str) -> None:
    outcomes = partition.outcomes
    keys = [o["k"] for o in outcomes]
    assert not _failed(outcomes), f"{_failed(outcomes)}\n{tails}"
    assert not _wrong(outcomes, expected), f"{_wrong(outcomes, expected)[:3]}\n{tails}"
    assert len(keys) == len(set(keys)) == max(keys) + 1  # one answer per request, none missing
    assert partition.late == 0, "answers from the worker while it was cut off"
    # it held messages, or took one that Redis sent into the cut (its BRPOP was waiting): without that,
    # nothing was handed over and the figures prove nothing
    assert partition.caught and partition.reruns >= 1, tails


def test_a_worker_host_whose_link_goes_down_hands_its_work_over_and_rejoins(cluster: Cluster, expected: np.ndarray):
    """`ip link set <its veth> down` under load: the apis re-queue what it held within the heartbeat's expiry
    (plus a registry refresh), nothing fails; with the link back it serves again."""
    host, victim = cluster.worker_hosts[2], cluster.workers[2]
    partition = _partition(cluster, victim, lambda: cluster.network.cut(host), lambda: cluster.network.restore(host))
    print(partition.report("worker link down under load", expected))
    tails = _tails(victim, *cluster.apis)
    _assert_every_request_answered_once_and_right(partition, expected, tails)
    assert partition.detected_s <= HEARTBEAT_TTL_S + 1, tails
    assert partition.moved_s <= HEARTBEAT_TTL_S + 1.5, tails
    assert partition.rejoined_s < 5 and partition.serves_s < 5, tails


def test_a_worker_host_cut_from_redis_past_its_heartbeat_answers_each_request_once(
    cluster: Cluster, expected: np.ndarray
):
    """Cut from Redis (iptables DROP inside its namespace) for twice the heartbeat's lifetime: what it held
    runs elsewhere; back, it runs its stale messages too — no request may get a second or someone else's answer."""
    host, victim = cluster.worker_hosts[1], cluster.workers[1]
    partition = _partition(cluster, victim, lambda: host.block(cluster.redis_address), host.unblock)
    print(partition.report("worker cut from Redis under load", expected))
    tails = _tails(victim, *cluster.apis)
    _assert_every_request_answered_once_and_right(partition, expected, tails)
    assert partition.serves_s < 5, tails


def test_an_api_host_cut_from_redis_fails_fast_and_recovers_by_itself(cluster: Cluster, expected: np.ndarray):
    cut_api, other = cluster.api_hosts[0], cluster.apis[1]
    deadline_s = 10.0
    run = ClientRun(cluster, cluster.targets([cluster.apis[0]]), threads=4, timeout_s=deadline_s)
    control = ClientRun(cluster, cluster.targets([other]), threads=2, timeout_s=deadline_s)
    try:
        run.wait(lambda outcomes: len(outcomes) > 40)
        cut = time.monotonic()
        cut_api.block(cluster.redis_address)
        run.wait(lambda outcomes: sum(o["code"] != "OK" and o["started"] > cut + 3 for o in outcomes) >= 20)
        ready_during = cluster.client.call(_readiness, cluster.apis[0])
        restored = time.monotonic()
        cut_api.unblock()
        back = run.wait(lambda outcomes: any(o["code"] == "OK" and o["started"] > restored for o in outcomes))
        time.sleep(1)
    finally:
        cut_api.unblock()
        outcomes = run.stop()
        control_outcomes = control.stop()
    during = [o for o in outcomes if cut < o["finished"] and o["started"] < restored]
    failed = [o for o in during if o["code"] != "OK"]
    noticed = min(o["finished"] for o in failed)
    in_flight = [o["finished"] - cut for o in during if o["started"] < cut]  # held when the link went
    later = [o for o in during if o["started"] > noticed]
    slowest_later_s = max(o["finished"] - o["started"] for o in later)
    codes = sorted({o["code"] for o in failed})
    print(
        f"hosts: api cut from Redis: noticed {noticed - cut:.2f} s after the cut (requests in flight then ended "
        f"{max(in_flight):.2f} s after it at the latest), then {len(later)} requests failed with {codes} in "
        f"{slowest_later_s * 1000:.0f} ms at most (deadline {deadline_s:.0f} s); readiness {ready_during}; served "
        f"again {back - restored:.2f} s after the link returned; the other api meanwhile: "
        f"{len(control_outcomes)} requests, {len(_failed(control_outcomes))} failed"
    )
    tails = _tails(cluster.apis[0])
    assert set(codes) <= {"UNAVAILABLE", "503"}, f"{codes}\n{tails}"
    # the api PINGs Redis every 0.25 s with a 1 s timeout; its own calls give up after 2 s (tasks/link.py)
    assert noticed - cut < 3 and max(in_flight) < 3.5, tails
    assert all(o["code"] != "OK" for o in later) and slowest_later_s < 0.5, tails
    assert ready_during == 503
    assert back - restored < 3, tails
    assert not _failed(control_outcomes) and not _wrong(control_outcomes + outcomes, expected)
