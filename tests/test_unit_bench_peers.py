"""The peer environments of `python -m bench --peer` and how a peer's count is read, without
installing one (the bench installs it when run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.peers import PEERS, flower_counts, pins

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"
# The broker client and metrics library: a peer runs them at the exporter's versions.
SHARED = ("celery", "kombu", "redis", "hiredis", "prometheus-client", "amqp", "billiard", "vine")


def _locked() -> dict[str, str]:
    lines = LOCK.read_text().splitlines()
    return pins(tuple(line for line in lines if "==" in line and not line.startswith("#")))


@pytest.mark.parametrize("name", sorted(PEERS))
def test_a_peer_pins_every_package_once_exactly(name: str) -> None:
    found = pins(PEERS[name].requirements)
    assert len(found) == len(PEERS[name].requirements)
    assert found[name] == PEERS[name].requirements[0].partition("==")[2]


def test_flower_shares_the_exporters_broker_client_versions() -> None:
    locked, flower = _locked(), pins(PEERS["flower"].requirements)
    assert {name: flower[name] for name in SHARED} == {name: locked[name] for name in SHARED}


@pytest.mark.parametrize(
    ("requirements", "error"),
    [
        (("flower>=2.2",), "not an exact pin"),
        (("flower",), "not an exact pin"),
        (("flower==2.*",), "not an exact pin"),
        (("celery==5.7.0", "Celery[redis]==5.7.0"), "pinned twice: celery"),
    ],
)
def test_anything_but_exact_pins_is_refused(requirements: tuple[str, ...], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        pins(requirements)


def test_flower_counts_sum_workers_and_name_unnamed_tasks_unknown() -> None:
    page = "\n".join(
        [
            "# HELP flower_events_total Number of events",
            "# TYPE flower_events_total counter",
            'flower_events_total{task="add",type="task-received",worker="w1"} 3.0',
            'flower_events_total{task="add",type="task-received",worker="w2"} 4.0',
            'flower_events_total{task="",type="task-succeeded",worker="w1"} 2.0',
            'flower_events_created{task="add",type="task-received",worker="w1"} 1.7e9',
            "# HELP flower_worker_online Worker online status",
            "# TYPE flower_worker_online gauge",
            'flower_worker_online{worker="w1"} 1.0',
            "",
        ]
    )
    assert flower_counts(page) == {("task-received", "add"): 7, ("task-succeeded", "unknown"): 2}
