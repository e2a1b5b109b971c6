"""Worker inspection on both brokers: the exporter's own pidbox client asks a real worker.

The inspector runs in a fresh interpreter, so that whether it imports Celery can be seen: it must
not (the import alone costs the daemon about 6 MiB).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import sample_app as sa
from tests.celery_procs import ProcsFactory
from tests.services import _child_env

CONCURRENCY = 3

# argv: broker URL, worker nodename. Rounds until the worker answers (it may still be starting).
_INSPECT = """
import json, sys
from exporter.inspect import Inspector, InspectStats
from exporter.state.routing import QueueResolver

resolver = QueueResolver()
inspector = Inspector(
    broker_url=sys.argv[1], transport_options={}, interval=1.0, timeout=2.0,
    resolver=resolver, live_workers=lambda: 1, stats=InspectStats(),
)
rounds = 0
while rounds < 20:
    rounds += 1
    inspector._inspect([sys.argv[2]])
    if inspector.concurrency and resolver.worker_queues:
        break
inspector.close()
print(json.dumps({
    "queues": resolver.worker_queues,
    "concurrency": inspector.concurrency,
    "reserved": inspector.reserved,
    "stats": inspector.stats.read(),
    "rounds": rounds,
    "celery_imported": any(name.split(".")[0] == "celery" for name in sys.modules),
}))
"""


@pytest.fixture(
    params=[
        pytest.param("redis_server", marks=pytest.mark.redis, id="redis"),
        pytest.param("rabbitmq_server", marks=pytest.mark.rabbitmq, id="rabbitmq"),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(request.param).url
    return url


def test_inspection_asks_a_real_worker_without_celery(
    broker_url: str, celery_procs: ProcsFactory
) -> None:
    """A prefork worker (-c 3) consuming queues a and b: one targeted round gives exactly its
    queues, its pool size 3 and 0 reserved requests, every round is counted as one ok
    inspection, and the inspecting process never imported Celery."""
    worker = celery_procs(broker_url).worker(
        queues=[sa.QUEUE_A, sa.QUEUE_B], concurrency=CONCURRENCY, name="pidbox"
    )
    node = worker.nodename
    done = subprocess.run(
        [sys.executable, "-c", _INSPECT, broker_url, node],
        capture_output=True,
        text=True,
        timeout=120,
        env=_child_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["concurrency"] == {node: CONCURRENCY}, f"{got}\n{worker.log()}"
    assert list(got["queues"]) == [node]
    assert sorted(got["queues"][node]) == sorted([sa.QUEUE_A, sa.QUEUE_B])
    assert got["reserved"] == {node: 0}
    assert got["stats"] == {"ok": got["rounds"]}
    assert got["celery_imported"] is False
