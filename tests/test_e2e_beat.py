"""Beat liveness end to end: real redis-server, real ``celery beat`` (file scheduler and
RedBeat), a real worker running the shipped heartbeat task, and the real exporter process.

Beat runs tests.beat_app, which installs ``exporter.beat``'s entry at a 1 s interval. Every test
that starts Beat has a private redis-server, so no heartbeat message (which a sample-app worker
of another test could not run) is ever left on the session broker.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from prometheus_client.samples import Sample

import exporter.beat
from tests import beat_app, beat_schedule_app
from tests import sample_app as sa
from tests.celery_procs import CeleryProcess, ProcsFactory
from tests.helpers import http_get, scrape, value, wait_for_value, wait_until
from tests.services import ExporterFactory, ExporterProcess, RedisFactory, RedisServer

pytestmark = pytest.mark.redis

HEARTBEAT = exporter.beat.HEARTBEAT_TASK
LAST = "celery_beat_last_heartbeat_timestamp_seconds"
UP = "celery_beat_up"
LOCK_TTL = "celery_beat_redbeat_lock_ttl_seconds"
NEXT_DUE = "celery_beat_redbeat_next_due_timestamp_seconds"
PERIODIC_LAST = "celery_periodic_task_last_sent_timestamp_seconds"
PERIODIC_INTERVAL = "celery_periodic_task_expected_interval_seconds"
POLL_LAST = "celery_exporter_poll_last_success_timestamp_seconds"

MAX_AGE = 4.0
# Bounds for a failing run; a passing one returns as soon as it can.
START_SECONDS = 30.0  # Beat (and a worker) importing Celery, connecting, first tick
DOWN_SECONDS = 20.0  # MAX_AGE (or RedBeat's lock timeout) plus a poll, with room to spare

BEAT_EXPORTER_ARGS = (
    "--beat-redis-key", exporter.beat.HEARTBEAT_KEY,
    "--beat-poll-interval-seconds", "1",
    "--beat-max-heartbeat-age-seconds", str(MAX_AGE),
)  # fmt: skip


def _diagnostics(exporter: ExporterProcess, *processes: CeleryProcess) -> str:
    logs = "\n".join(f"--- {p.name} log:\n{p.log()}" for p in processes)
    return f"{logs}\n--- exporter stderr:\n{exporter.stderr()}"


def wait_advancing(
    exporter: ExporterProcess,
    name: str,
    advances: int,
    timeout: float,
    *processes: CeleryProcess,
    after: float = 0.0,
    **labels: str,
) -> list[float]:
    """Scrape until ``name{labels}`` took ``advances + 1`` distinct values above ``after``.

    Consecutive observations must never go backwards, and ``up`` of the same source must be 1
    at each: the distinct values seen, in order (strictly increasing).
    """
    seen: list[float] = []

    def step() -> bool:
        for process in processes:
            assert process.running, f"{process.name} exited:\n{process.log()}"
        samples = scrape(exporter.port)
        got = value(samples, name, **labels)
        if got is None or got <= after:
            return False
        if seen:
            assert got >= seen[-1], f"{name}{labels} went backwards: {seen} then {got}"
        if not seen or got > seen[-1]:
            seen.append(got)
            if "source" in labels:
                assert value(samples, UP, source=labels["source"]) == 1, (
                    f"{UP}{{source={labels['source']!r}}} is not 1 at heartbeat {got}"
                )
        return len(seen) > advances

    wait_until(
        step,
        timeout,
        lambda: (
            f"{name}{labels} took only {seen} (above {after}); "
            + _diagnostics(exporter, *processes)
        ),
    )
    assert seen == sorted(set(seen)), seen
    return seen


def wait_beat_polls(exporter: ExporterProcess, polls: int, timeout: float) -> None:
    """Until the Redis Beat poller succeeded ``polls`` more times than now (a first success
    counts as one when it has not succeeded yet)."""
    start = value(scrape(exporter.port), POLL_LAST, poller="beat")
    seen = [-1.0 if start is None else start]

    def polled() -> bool:
        got = value(scrape(exporter.port), POLL_LAST, poller="beat")
        if got is not None and got > seen[-1]:
            seen.append(got)
        return len(seen) > polls

    wait_until(polled, timeout, lambda: f"beat poller successes seen: {seen}")


def test_heartbeat_sources_follow_beat_and_recover_after_a_restart(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """A real ``celery beat`` with ``exporter.beat.install(app, interval=1.0)`` and a real worker
    running the heartbeat task: the events source (task-sent of exporter.beat.heartbeat) and
    the redis_key source (the key the task writes) both advance with each tick, strictly
    increasing, with celery_beat_up 1. Beat is stopped (SIGTERM): the events timestamp stops at
    its last tick, sent before the stop, and its celery_beat_up turns 0 once older than 4 s;
    the key expires (its TTL is 4 intervals), so redis_key's timestamp series goes and its up
    is 0. Beat restarted on the same schedule file: both sources are up again and advance past
    their old values."""
    server = redis_factory()
    exp = exporter_factory(server.url, *BEAT_EXPORTER_ARGS)
    procs = celery_procs(server.url)
    beat = procs.beat()
    worker = procs.worker(
        app="tests.beat_app", queues=[beat_app.HEARTBEAT_QUEUE], pool="solo", concurrency=1
    )

    events = wait_advancing(exp, LAST, 3, START_SECONDS, beat, worker, source="events")
    key = wait_advancing(exp, LAST, 2, START_SECONDS, beat, worker, source="redis_key")

    beat.stop()
    stopped_at = time.time()
    wait_for_value(exp.port, 0, UP, DOWN_SECONDS, source="events")
    wait_for_value(exp.port, 0, UP, DOWN_SECONDS, source="redis_key")
    samples = scrape(exp.port)
    last_event = value(samples, LAST, source="events")
    assert last_event is not None
    # Its last tick was sent before the stop (a worker's task-received of it may follow by
    # milliseconds).
    assert events[-1] <= last_event < stopped_at + 0.5
    # Nothing moves any more: two more reads of Redis change neither source.
    wait_until(
        lambda: value(scrape(exp.port), LAST, source="redis_key") is None,
        DOWN_SECONDS,
        "the heartbeat key did not expire",
    )
    wait_beat_polls(exp, 2, DOWN_SECONDS)
    samples = scrape(exp.port)
    assert value(samples, LAST, source="events") == last_event
    assert value(samples, LAST, source="redis_key") is None
    assert value(samples, UP, source="events") == 0
    assert value(samples, UP, source="redis_key") == 0

    beat.start()
    wait_advancing(exp, LAST, 2, START_SECONDS, beat, worker, after=last_event, source="events")
    wait_advancing(exp, LAST, 1, START_SECONDS, beat, worker, after=key[-1], source="redis_key")


def test_periodic_task_last_sent_follows_beat(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """With ``--periodic-tasks`` naming exporter.beat.heartbeat (every 1 s) and a task never
    sent (every 60 s): celery_periodic_task_last_sent_timestamp_seconds of the heartbeat
    advances with each of Beat's task-sent events and equals the events source's heartbeat;
    celery_periodic_task_expected_interval_seconds is exactly 1 and 60; the task never sent has
    no last-sent series. No worker runs: Beat's task-sent alone carries it."""
    never = "tests.never_sent"
    server = redis_factory()
    exp = exporter_factory(server.url, "--periodic-tasks", json.dumps({HEARTBEAT: 1, never: 60}))
    beat = celery_procs(server.url).beat()

    sent = wait_advancing(exp, PERIODIC_LAST, 3, START_SECONDS, beat, task=HEARTBEAT)
    samples: list[Sample] = []

    def same_as_events() -> bool:
        # One scrape reads the two from the same state at two instants: a tick may fall between.
        nonlocal samples
        samples = scrape(exp.port)
        got = value(samples, PERIODIC_LAST, task=HEARTBEAT)
        return got is not None and value(samples, LAST, source="events") == got

    wait_until(same_as_events, 10, "periodic last-sent differs from the events heartbeat")
    got = value(samples, PERIODIC_LAST, task=HEARTBEAT)
    assert got is not None
    assert got >= sent[-1]
    assert value(samples, PERIODIC_INTERVAL, task=HEARTBEAT) == 1
    assert value(samples, PERIODIC_INTERVAL, task=never) == 60
    assert value(samples, PERIODIC_LAST, task=never) is None
    assert {s.labels["task"] for s in samples if s.name == PERIODIC_INTERVAL} == {HEARTBEAT, never}


# --- the Redis key, written directly ---------------------------------------------------

# 2024-05-06T05:08:09.5Z, in the forms a heartbeat key may hold it.
FIXED_UNIX = 1714972089.5
FIXED_FORMS = [
    "1714972089.5",
    "2024-05-06T05:08:09.500000+00:00",
    "2024-05-06T07:08:09.5+02:00",
    "2024-05-06T05:08:09.5Z",
    "2024-05-06T05:08:09.5",  # no zone: UTC
    " 1714972089.5\n",
]


def _key_exporter(
    exporter_factory: ExporterFactory, url: str, key: str, *extra: str
) -> ExporterProcess:
    return exporter_factory(
        url,
        "--beat-redis-key", key,
        "--beat-poll-interval-seconds", "0.2",
        "--beat-max-heartbeat-age-seconds", "60",
        *extra,
    )  # fmt: skip


def test_redis_key_values_in_every_format(
    redis_server: RedisServer, exporter_factory: ExporterFactory
) -> None:
    """The heartbeat key, written with redis-py: unix seconds and ISO-8601 (with an offset,
    with Z, without a zone meaning UTC) all read as the same exact unix time, old enough that
    celery_beat_up{source="redis_key"} is 0; the current time in either format reads exactly
    and is up 1; a missing key and an unreadable value give up 0 and no timestamp series."""
    key = f"beat-hb-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server.url)
    exp = _key_exporter(exporter_factory, redis_server.url, key)
    try:
        wait_beat_polls(exp, 1, 10)
        samples = scrape(exp.port)
        assert value(samples, UP, source="redis_key") == 0
        assert value(samples, LAST, source="redis_key") is None

        for form in FIXED_FORMS:
            client.set(key, form)
            wait_for_value(exp.port, FIXED_UNIX, LAST, 10, source="redis_key")
            assert value(scrape(exp.port), UP, source="redis_key") == 0, form
            client.delete(key)
            wait_until(
                lambda: value(scrape(exp.port), LAST, source="redis_key") is None,
                10,
                "the deleted key still reads",
            )

        now_unix = round(time.time(), 3)
        client.set(key, repr(now_unix))
        wait_for_value(exp.port, now_unix, LAST, 10, source="redis_key")
        assert value(scrape(exp.port), UP, source="redis_key") == 1

        moment = datetime.now(UTC).replace(microsecond=250000)
        client.set(key, moment.isoformat())
        wait_for_value(exp.port, moment.timestamp(), LAST, 10, source="redis_key")
        assert value(scrape(exp.port), UP, source="redis_key") == 1

        client.set(key, "not a time")
        wait_until(
            lambda: value(scrape(exp.port), LAST, source="redis_key") is None,
            10,
            "an unreadable value still shows a timestamp",
        )
        samples = scrape(exp.port)
        assert value(samples, UP, source="redis_key") == 0
        assert value(samples, POLL_LAST, poller="beat") is not None
        assert http_get(exp.url + "/readyz").status == 200
    finally:
        client.delete(key)
        client.close()


def test_redis_key_is_read_under_global_keyprefix(
    redis_server: RedisServer, exporter_factory: ExporterFactory
) -> None:
    """With ``global_keyprefix`` in --broker-transport-options the key is read prefixed: the
    same name without the prefix is ignored (up 0, no timestamp), the prefixed key reads
    exactly; and the shipped exporter.beat.heartbeat task, run through an app with the same
    transport options, writes the prefixed key the exporter then reads, value for value."""
    prefix = f"pfx-{uuid.uuid4().hex[:8]}:"
    key = "celery_beat_heartbeat"
    options = {"global_keyprefix": prefix}
    client = redis.Redis.from_url(redis_server.url)
    exp = _key_exporter(
        exporter_factory,
        redis_server.url,
        key,
        "--broker-transport-options",
        json.dumps(options),
    )
    app: Any = sa.make_app(redis_server.url, name="beat-prefix")
    app.conf.broker_transport_options = options
    try:
        client.set(key, repr(time.time()))
        wait_beat_polls(exp, 2, 10)
        samples = scrape(exp.port)
        assert value(samples, LAST, source="redis_key") is None
        assert value(samples, UP, source="redis_key") == 0

        client.set(prefix + key, "1714972089.5")
        wait_for_value(exp.port, FIXED_UNIX, LAST, 10, source="redis_key")

        app.tasks[HEARTBEAT].apply(kwargs={"key": key, "ttl": 60}).get()
        written = client.get(prefix + key)
        assert written is not None
        assert 55 < client.ttl(prefix + key) <= 60  # written with ex=60, read a moment later
        wait_for_value(exp.port, float(written), LAST, 10, source="redis_key")
        assert value(scrape(exp.port), UP, source="redis_key") == 1
    finally:
        client.delete(key, prefix + key)
        client.close()
        app.close()


# --- RedBeat ---------------------------------------------------------------------------


def test_redbeat_lock_and_schedule_follow_beat(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """A real ``celery beat -S redbeat.RedBeatScheduler`` (lock timeout 5 s, loop interval
    1 s): while it runs, celery_beat_redbeat_lock_ttl_seconds is present and within (0, 5],
    celery_beat_up{source="redbeat"} is 1, its heartbeat is within 5 s of now, and
    celery_beat_redbeat_next_due_timestamp_seconds names the heartbeat entry's due time.
    Beat killed (SIGKILL, no lock release): the lock expires, up turns 0 and the TTL and
    redbeat heartbeat series go, while the schedule stays in Redis, now overdue. Beat
    restarted: it takes the lock again and up is 1."""
    if importlib.util.find_spec("redbeat") is None:
        pytest.fail("celery-redbeat is not installed: scripts/setup.sh test", pytrace=False)
    server = redis_factory()
    exp = exporter_factory(
        server.url,
        "--beat-redbeat",
        "--beat-redbeat-lock-timeout-seconds", str(beat_app.REDBEAT_LOCK_TIMEOUT),
        "--beat-poll-interval-seconds", "0.5",
        "--beat-max-heartbeat-age-seconds", str(MAX_AGE),
    )  # fmt: skip
    procs = celery_procs(server.url)
    redbeat_env = procs.env(**{beat_app.REDBEAT_ENV: "1"})
    beat_args = ["-S", "redbeat.RedBeatScheduler"]
    beat = procs.beat(extra=beat_args, env=redbeat_env)

    def running_state() -> str:
        samples = scrape(exp.port)
        ttl = value(samples, LOCK_TTL)
        due = value(samples, NEXT_DUE)
        last = value(samples, LAST, source="redbeat")
        now = time.time()
        problems = []
        if ttl is None or not 0 < ttl <= beat_app.REDBEAT_LOCK_TIMEOUT:
            problems.append(f"lock ttl {ttl}")
        if value(samples, UP, source="redbeat") != 1:
            problems.append(f"up {value(samples, UP, source='redbeat')}")
        if last is None or not now - beat_app.REDBEAT_LOCK_TIMEOUT <= last <= now + 1:
            problems.append(f"heartbeat {last} at {now}")
        if due is None or not now - 5 <= due <= now + 5:
            problems.append(f"next due {due} at {now}")
        return ", ".join(problems)

    def runs() -> bool:
        assert beat.running, f"beat exited:\n{beat.log()}"
        return not running_state()

    wait_until(runs, START_SECONDS, lambda: f"{running_state()}; " + _diagnostics(exp, beat))
    # The lock is extended on every tick: the heartbeat it implies keeps moving.
    wait_advancing(exp, LAST, 2, START_SECONDS, beat, source="redbeat")

    beat.stop(kill=True)
    killed_at = time.time()

    def lock_gone() -> bool:
        samples = scrape(exp.port)
        return (
            value(samples, UP, source="redbeat") == 0
            and value(samples, LOCK_TTL) is None
            and value(samples, LAST, source="redbeat") is None
        )

    wait_until(lock_gone, DOWN_SECONDS, lambda: "the lock never expired: " + running_state())
    assert time.time() - killed_at > 1.0, "the lock went at once: was it released?"
    due = value(scrape(exp.port), NEXT_DUE)
    assert due is not None
    assert due < time.time(), f"the schedule of a dead Beat is due {due}, after now"

    beat.start()
    wait_until(runs, START_SECONDS, lambda: f"{running_state()}; " + _diagnostics(exp, beat))


def test_redbeat_keys_are_read_unprefixed_under_global_keyprefix(
    redis_server: RedisServer, exporter_factory: ExporterFactory
) -> None:
    """RedBeat talks to Redis through its own client, so its lock and schedule never carry
    kombu's ``global_keyprefix``: with the prefix in --broker-transport-options, a lock and a
    schedule written (with redis-py) under RedBeat's own names read as they are: the lock TTL
    within (0, 60] and the next due time exactly the entry's score."""
    prefix = f"rb-{uuid.uuid4().hex[:8]}:"
    lock, schedule = f"{prefix}:lock", f"{prefix}:schedule"
    client = redis.Redis.from_url(redis_server.url)
    exp = exporter_factory(
        redis_server.url,
        "--beat-redbeat",
        "--beat-redbeat-key-prefix", prefix,
        "--beat-redbeat-lock-timeout-seconds", "60",
        "--beat-poll-interval-seconds", "0.2",
        "--broker-transport-options", json.dumps({"global_keyprefix": "kombu-pfx:"}),
    )  # fmt: skip
    try:
        client.set(lock, "token", px=60_000)
        client.zadd(schedule, {f"{prefix}entry": FIXED_UNIX})
        wait_until(
            lambda: value(scrape(exp.port), LOCK_TTL) is not None, 10, "the lock is not read"
        )
        wait_beat_polls(exp, 2, 10)
        samples = scrape(exp.port)
        ttl = value(samples, LOCK_TTL)
        assert ttl is not None
        assert 0 < ttl <= 60
        assert value(samples, NEXT_DUE) == FIXED_UNIX
    finally:
        client.delete(lock, schedule)
        client.close()


# --- the app's beat_schedule ------------------------------------------------------------

PERIODIC_NEXT_DUE = "celery_periodic_task_next_due_timestamp_seconds"
PERIODIC_MISSED = "celery_periodic_task_missed_total"
GRACE = 1.0
MINUTE_SECONDS = 90.0  # a crontab's whole minute, plus Beat's start-up


def _after(anchor: float, seconds: float) -> float:
    """``anchor`` plus ``seconds`` as the exporter computes it (datetime, to the microsecond)."""
    return (datetime.fromtimestamp(anchor, UTC) + timedelta(seconds=seconds)).timestamp()


def _next_minute(moment: float) -> float:
    return (math.floor(moment / 60) + 1) * 60.0


def _scrape_at(exporter: ExporterProcess, moment: float) -> list[Sample]:
    time.sleep(max(0.0, moment - time.time()))
    return scrape(exporter.port)


def test_app_schedule_next_due_and_missed_runs(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """The exporter started with ``--app tests.beat_schedule_app:app`` (no --periodic-tasks)
    and a real ``celery beat`` running that app: an entry every 2 s and a crontab every minute.

    While Beat runs, next due of the interval task is exactly its last task-sent plus 2 s, and
    of the crontab task the whole minute after its last task-sent (sent within a second of
    its minute). Beat stopped: last-sent and next due stay; between two scrapes placed midway
    between grace deadlines (due time + 1 s), the missed counters grow by exactly the due times
    whose grace ran out in between: one per 2 s for the interval task, and one for the crontab
    task, whose window spans one whole minute."""
    server = redis_factory()
    exp = exporter_factory(
        server.url,
        "--app", "tests.beat_schedule_app:app",
        "--periodic-task-grace-seconds", str(GRACE),
    )  # fmt: skip
    beat = celery_procs(server.url).beat(app="tests.beat_schedule_app")
    every, minutely = beat_schedule_app.INTERVAL_TASK, beat_schedule_app.CRONTAB_TASK
    interval = beat_schedule_app.INTERVAL_SECONDS

    wait_advancing(exp, PERIODIC_LAST, 2, START_SECONDS, beat, task=every)
    samples = scrape(exp.port)
    last = value(samples, PERIODIC_LAST, task=every)
    assert last is not None
    assert value(samples, PERIODIC_NEXT_DUE, task=every) == _after(last, interval)

    wait_until(
        lambda: value(scrape(exp.port), PERIODIC_LAST, task=minutely) is not None,
        MINUTE_SECONDS,
        lambda: "the crontab task was never sent; " + _diagnostics(exp, beat),
    )
    samples = scrape(exp.port)
    last_minutely = value(samples, PERIODIC_LAST, task=minutely)
    assert last_minutely is not None
    assert last_minutely % 60 < 1.0, f"sent at {last_minutely}, not at a whole minute"
    assert value(samples, PERIODIC_NEXT_DUE, task=minutely) == _next_minute(last_minutely)
    last = value(samples, PERIODIC_LAST, task=every)
    assert last is not None
    assert value(samples, PERIODIC_NEXT_DUE, task=every) == _after(last, interval)

    beat.stop()
    time.sleep(0.5)  # the last task-sent, published before Beat's exit, reaches the exporter
    samples = scrape(exp.port)
    last = value(samples, PERIODIC_LAST, task=every)
    last_minutely = value(samples, PERIODIC_LAST, task=minutely)
    assert last is not None
    assert last_minutely is not None

    # Grace deadlines: every 2 s at last + 2k + 1 (interval) and at each minute + 1 (crontab).
    # Scrapes go midway between the interval's, at least 0.3 s from a crontab one, so that
    # scrape latency cannot put a deadline on the wrong side.
    def midway(earliest: float) -> float:
        moment = last + interval * math.ceil((earliest - last) / interval)
        while abs((moment - GRACE) - round((moment - GRACE) / 60) * 60) < 0.3:
            moment += interval
        return moment

    first = midway(time.time() + 0.5)
    second = midway(_next_minute(first) + GRACE + 0.5)
    before = _scrape_at(exp, first)
    after = _scrape_at(exp, second)
    for samples in (before, after):
        assert value(samples, PERIODIC_LAST, task=every) == last
        assert value(samples, PERIODIC_LAST, task=minutely) == last_minutely
        assert value(samples, PERIODIC_NEXT_DUE, task=every) == _after(last, interval)
        assert value(samples, PERIODIC_NEXT_DUE, task=minutely) == _next_minute(last_minutely)

    def missed(samples: list[Sample], task: str) -> float:
        got = value(samples, PERIODIC_MISSED, task=task)
        assert got is not None, f"no missed counter for {task}"
        return got

    crontab_deadlines = math.floor((second - GRACE) / 60) - math.floor((first - GRACE) / 60)
    assert crontab_deadlines == 1
    increase = {task: missed(after, task) - missed(before, task) for task in (every, minutely)}
    assert increase == {
        every: round((second - first) / interval),
        minutely: crontab_deadlines,
    }, _diagnostics(exp, beat)


def test_redbeat_entries_are_watched_as_they_come_and_go(
    redis_factory: RedisFactory,
    exporter_factory: ExporterFactory,
    celery_procs: ProcsFactory,
) -> None:
    """A real ``celery beat -S redbeat.RedBeatScheduler`` running tests.beat_schedule_app, and
    the exporter with ``--app`` and ``--beat-redbeat``. An entry added to RedBeat at run time
    (every 3 s, a task the app's beat_schedule does not name, saved with redbeat's own
    RedBeatSchedulerEntry) is watched: its last run is RedBeat's own last_run_at, exactly, and
    its next due that plus 3 s; deleted from RedBeat, its series go."""
    if importlib.util.find_spec("redbeat") is None:
        pytest.fail("celery-redbeat is not installed: scripts/setup.sh test", pytrace=False)
    from redbeat import RedBeatSchedulerEntry

    dynamic = "tests.periodic.added_at_run_time"
    server = redis_factory()
    exp = exporter_factory(
        server.url,
        "--app", "tests.beat_schedule_app:app",
        "--beat-redbeat",
        "--beat-redbeat-lock-timeout-seconds", str(beat_app.REDBEAT_LOCK_TIMEOUT),
        "--beat-poll-interval-seconds", "0.5",
        "--periodic-task-grace-seconds", str(GRACE),
    )  # fmt: skip
    procs = celery_procs(server.url)
    beat = procs.beat(
        app="tests.beat_schedule_app",
        extra=["-S", "redbeat.RedBeatScheduler"],
        env=procs.env(**{beat_app.REDBEAT_ENV: "1"}),
    )
    app: Any = sa.make_app(server.url, name="redbeat-entries")
    app.conf.redbeat_redis_url = server.url
    try:
        entry = RedBeatSchedulerEntry("added", dynamic, 3.0, app=app).save()
        wait_advancing(exp, PERIODIC_LAST, 2, START_SECONDS, beat, task=dynamic)
        samples: list[Sample] = []
        recorded: list[float | None] = [None]

        def as_redbeat_recorded() -> bool:
            nonlocal samples
            # RedBeat's record read before and after the scrape: a run between them retries.
            before = RedBeatSchedulerEntry.load_meta(entry.key, app=app)["last_run_at"]
            samples = scrape(exp.port)
            after = RedBeatSchedulerEntry.load_meta(entry.key, app=app)["last_run_at"]
            recorded[0] = before.timestamp() if before == after else None
            return (
                recorded[0] is not None
                and value(samples, PERIODIC_LAST, task=dynamic) == (recorded[0])
            )

        wait_until(
            as_redbeat_recorded,
            10,
            lambda: (
                f"last sent is not RedBeat's last_run_at {recorded[0]}; " + _diagnostics(exp, beat)
            ),
        )
        last = recorded[0]
        assert last is not None
        assert value(samples, PERIODIC_NEXT_DUE, task=dynamic) == _after(last, 3.0)
        # The app's own entries are watched beside it.
        assert value(samples, PERIODIC_NEXT_DUE, task=beat_schedule_app.INTERVAL_TASK) is not None

        entry.delete()
        wait_until(
            lambda: value(scrape(exp.port), PERIODIC_NEXT_DUE, task=dynamic) is None,
            10,
            "the deleted RedBeat entry is still watched",
        )
        samples = scrape(exp.port)
        assert value(samples, PERIODIC_LAST, task=dynamic) is None
        assert value(samples, PERIODIC_MISSED, task=dynamic) is None
    finally:
        app.close()
