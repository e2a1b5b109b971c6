"""Worker inspection on both brokers: the exporter's own pidbox client asks a real worker.

The inspector runs in a fresh interpreter, so that whether it imports Celery can be seen: it must
not (the import alone cost the idle daemon 3.4 MiB).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests import sample_app as sa
from tests.celery_procs import ProcsFactory
from tests.services import _child_env

CONCURRENCY = 3

# argv: broker URL, worker nodename. Rounds until the worker has answered all three broadcasts
# (it may still be starting), for up to a minute.
_INSPECT = """
import json, sys, time
from exporter.inspect import Inspector, InspectStats
from exporter.state.routing import QueueResolver

resolver = QueueResolver()
inspector = Inspector(
    broker_url=sys.argv[1], transport_options={}, interval=1.0, timeout=2.0,
    resolver=resolver, live_workers=lambda: 1, stats=InspectStats(),
)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    inspector._inspect([sys.argv[2]])
    if inspector.concurrency and inspector.reserved and resolver.worker_queues:
        break
inspector.close()
print(json.dumps({
    "queues": resolver.worker_queues,
    "concurrency": inspector.concurrency,
    "reserved": inspector.reserved,
    "celery_imported": any(name.split(".")[0] == "celery" for name in sys.modules),
}))
"""


def test_inspection_asks_a_real_worker_without_celery(
    broker_url: str, celery_procs: ProcsFactory
) -> None:
    """A prefork worker (-c 3) consuming queues a and b: one targeted round gives exactly its
    queues, its pool size 3 and 0 reserved requests, and the inspecting process never imported
    Celery."""
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
    assert got["celery_imported"] is False
