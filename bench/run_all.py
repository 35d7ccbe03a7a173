"""Every benchmark in one run, side by side, and one table at the end (docs/performance.md).

    .venv/bin/python bench/run_all.py                 # the whole set, about 8 minutes on 2 cores
    .venv/bin/python bench/run_all.py --only io,cpu   # some sections only (see SECTIONS)
    .venv/bin/python bench/run_all.py --soak 30       # soak mode instead (not in CI): 30 minutes

Sections, each against its baseline measured in the same run:

- event queue: throughput of our consumer vs the Katello-style one-at-a-time baseline vs the raw
  batch floor, and the enqueue-to-start latency (bench/bench_queue.py's functions);
- STOMP: our listener vs a raw stomp.py consumer (bench/candlepin.py's functions);
- failover: from SIGKILL of the runner (a ``run_event_daemon`` with two standbys) to the next
  event handled, read from the handler's own timestamp; median of 10 kills;
- web overhead: gunicorn with two workers, one of them the runner draining events at full speed;
  the time each worker took to serve ``/api/ping`` (gunicorn's access log, ``%(D)s``), runner
  worker vs standby worker, p50 and p99;
- memory: a daemon's RSS after a warm-up and after 200,000 more events;
- slow handlers (bench/slow_handlers.py's functions): a 20 ms I/O-bound handler at CONCURRENCY
  1, 4, 16, 32 against the ideal; a 1 ms CPU-bound handler, CONCURRENCY 16 against 1; a batch
  handler against the per-event one; the Candlepin inbox against the listener running handlers
  itself; and the web overhead again, with 16 handler threads waiting on I/O.

``--only SECTION,...`` runs some sections (queue, stomp, failover, web, memory, io, cpu, batch,
inbox, web-io); without it every section runs and the table has every row.

Soak mode: a daemon under a steady stream of events for N minutes; RSS and events handled
sampled every minute; the least-squares slope of each printed.

Events are ``chaos.record`` (tests/eventsapp: one INSERT per event, in the batch's transaction),
so these figures include a realistic handler write, unlike bench_queue.py's no-op handler.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example_project")]
# The test settings plus the slow handlers' app (bench/benchapp); bench_queue would default to tests.settings.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# bench_queue first: it points DATABASE_URL at its own database, which everything here uses.
bench_queue = _load("bench_queue", BENCH / "bench_queue.py")
bench_candlepin = _load("bench_candlepin", BENCH / "candlepin.py")
slow = _load("slow_handlers", BENCH / "slow_handlers.py")

from tests.support import Server, free_port, gunicorn_args, http_get, lock_holders, manage_args, server_env  # noqa: E402

DATABASE = bench_queue.DATABASE
wait_until = slow.wait_until
LOG_DIR = Path(tempfile.mkdtemp(prefix="katello-bench-"))


# -- helpers ------------------------------------------------------------------------------------


def fill_chaos_events(count: int, tag: str) -> None:
    """``count`` pending ``chaos.record`` events (distinct pairs), in one statement."""
    with bench_queue.raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO katello_events_event (event_type, object_id, metadata, state, run_after, attempts, "
            "last_error, created_at, updated_at) SELECT 'chaos.record', %s || g::text, "
            "jsonb_build_object('uid', %s || g::text), 'pending', now(), 0, '', now(), now() "
            "FROM generate_series(1, %s) g",
            [f"{tag}-", f"{tag}-", count],
        )


def pending() -> int:
    with bench_queue.raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM katello_events_event WHERE state = 'pending'")
        return cursor.fetchone()[0]


def handled() -> int:
    with bench_queue.raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM eventsapp_handling")
        return cursor.fetchone()[0]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no RSS for {pid}")


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100)[pct - 1] if len(values) > 1 else values[0]


def slope(ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against 0, 1, 2... (per sample)."""
    n = len(ys)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(ys) / n
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(ys)) / sum((x - mean_x) ** 2 for x in range(n))


class Servers:
    """Daemons and gunicorns against the bench database, one lock file; all stopped at the end."""

    def __init__(self) -> None:
        self.lock_file = LOG_DIR / f"runner-{uuid.uuid4().hex[:6]}.lock"
        self.started: list[Server] = []
        # A destination of its own: the listener runs in every runner, on a queue nobody sends to.
        self.env = {"CANDLEPIN_QUEUE": f"/queue/katello_events.bench-{uuid.uuid4().hex[:8]}"}

    def start(self, args: list[str], **env: str) -> Server:
        log = LOG_DIR / f"server-{len(self.started)}.log"
        server = Server(args, server_env(DATABASE, self.lock_file, **self.env, **env), log)
        self.started.append(server)
        return server

    def daemon(self) -> Server:
        return self.start(manage_args("run_event_daemon"))

    def runner_pid(self, exclude: int | None = None) -> int:
        def one() -> int | None:
            holders = lock_holders(self.lock_file)
            return next(iter(holders)) if len(holders) == 1 and exclude not in holders else None

        return wait_until(one, 60, "one runner holds the lock")

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()
        self.started.clear()


def truncate() -> None:
    with bench_queue.raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute("TRUNCATE katello_events_event, eventsapp_handling")


# -- failover ------------------------------------------------------------------------------------


def bench_failover(kills: int) -> list[float]:
    """Seconds from SIGKILL of the runner to the next event handled (handler's own clock)."""
    truncate()
    servers = Servers()
    stop_producer = threading.Event()

    def producer() -> None:  # a steady trickle: there is always an event for the next runner
        n = 0
        while not stop_producer.wait(0.002):
            fill_chaos_events(1, f"f{n}")
            n += 1

    times = []
    try:
        daemons = {server.pid: server for server in (servers.daemon() for _ in range(3))}
        leader = servers.runner_pid()
        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        for _ in range(kills):
            standbys = [server for pid, server in daemons.items() if pid != leader]
            wait_until(lambda ready=standbys: any("waiting for" in s.log() for s in ready), 60, "a standby")
            wait_until(lambda pid=leader: handled_by(pid), 30, "the runner handles events")
            killed_at = time.time()
            os.kill(leader, signal.SIGKILL)
            daemons.pop(leader).process.wait(10)
            first = wait_until(lambda t=killed_at, pid=leader: first_handled_after(t, pid), 30, "handled after kill")
            times.append(first - killed_at)
            leader = servers.runner_pid(exclude=leader)
            new = servers.daemon()
            daemons[new.pid] = new
        stop_producer.set()
        thread.join(5)
    finally:
        stop_producer.set()
        servers.stop_all()
    return times


def handled_by(pid: int) -> bool:
    with bench_queue.raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM eventsapp_handling WHERE pid = %s)", [pid])
        return cursor.fetchone()[0]


def first_handled_after(unix_time: float, killed: int) -> float | None:
    with bench_queue.raw_connection() as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM min(handled_at)) FROM eventsapp_handling "
            "WHERE pid <> %s AND handled_at > to_timestamp(%s)",
            [killed, unix_time],
        )
        value = cursor.fetchone()[0]
        return float(value) if value is not None else None


# -- web overhead --------------------------------------------------------------------------------


def bench_web_overhead(events: int, seconds: float, fill=fill_chaos_events, **env: str) -> dict[str, list[float]]:
    """Serving times (ms) of /api/ping by the runner worker and by the standby, while it drains
    ``events`` queued by ``fill(count, tag)`` (``chaos.record`` by default); ``env`` goes to gunicorn."""
    truncate()
    servers = Servers()
    access_log = LOG_DIR / f"access-{uuid.uuid4().hex[:6]}.log"
    port = free_port()
    try:
        server = servers.start(
            gunicorn_args(port, 2, "--access-logformat", "%(p)s %(D)s"), GUNICORN_ACCESS_LOG=str(access_log), **env
        )
        runner = servers.runner_pid()
        wait_until(lambda: http_get(port) in (200, 503), 60, "gunicorn answers")
        fill(events, "w")
        wait_until(lambda: pending() < events - 1000, 60, "the runner is draining")
        stop = threading.Event()
        window = (time.monotonic(), pending())

        def load() -> None:
            while not stop.is_set():
                http_get(port)

        threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(seconds)  # a measurement window, not a wait for a condition
        stop.set()
        drained = (window[1] - pending()) / (time.monotonic() - window[0])
        for thread in threads:
            thread.join(10)
        still_draining = pending() > 0
        server.stop()
    finally:
        servers.stop_all()
    if not still_draining:
        print("  (the queue drained before the window ended: raise --web-events)")
    times: dict[str, list[float]] = {"runner": [], "standby": [], "drained": [drained]}  # drained: events/s
    for line in access_log.read_text().splitlines():
        pid, micros = line.split()
        times["runner" if int(pid.strip("<>")) == runner else "standby"].append(int(micros) / 1000)
    return times


# -- memory ---------------------------------------------------------------------------------------


def bench_memory(warmup: int, events: int) -> tuple[float, float]:
    """A daemon's RSS (MB) after ``warmup`` events and after ``events`` more."""
    truncate()
    servers = Servers()
    try:
        daemon = servers.daemon()
        servers.runner_pid()
        fill_chaos_events(warmup, "warm")
        wait_until(lambda: pending() == 0, 300, "warm-up drained", interval=0.2)
        time.sleep(1)  # heartbeats and gauges settle
        before = rss_mb(daemon.pid)
        for chunk in range(events // 20000):
            fill_chaos_events(20000, f"mem{chunk}")
            wait_until(lambda: pending() < 5000, 300, "the daemon keeps up", interval=0.2)
        wait_until(lambda: pending() == 0, 300, "drained", interval=0.2)
        time.sleep(1)
        after = rss_mb(daemon.pid)
    finally:
        servers.stop_all()
    return before, after


# -- soak -----------------------------------------------------------------------------------------


def soak(minutes: int, rate: int) -> None:
    truncate()
    servers = Servers()
    try:
        daemon = servers.daemon()
        servers.runner_pid()
        samples: list[tuple[float, int]] = []
        last = handled()
        print(f"soak: {minutes} min at {rate} events/s offered; one sample a minute")
        print(f"{'minute':>6} {'RSS MB':>8} {'events/s':>9} {'pending':>8}")
        for minute in range(1, minutes + 1):
            end = time.monotonic() + 60
            while time.monotonic() < end:
                fill_chaos_events(rate, f"s{minute}-{time.monotonic_ns()}")
                time.sleep(max(0.0, 1 - (time.monotonic() % 1)))
            now = handled()
            samples.append((rss_mb(daemon.pid), (now - last) / 60))
            last = now
            print(f"{minute:>6} {samples[-1][0]:>8.1f} {samples[-1][1]:>9.0f} {pending():>8}", flush=True)
    finally:
        servers.stop_all()
    print(f"slope: RSS {slope([s[0] for s in samples]):+.3f} MB/min, throughput {slope([s[1] for s in samples]):+.1f}")


# -- the run --------------------------------------------------------------------------------------


def stomp_rates(messages: int, rounds: int) -> tuple[float, float]:
    from katello_events.candlepin.options import parse_options

    settings = parse_options({"BROKER_URL": bench_candlepin.BROKER_URL})
    bench_candlepin.purge(settings)
    raw, ours = [], []
    for n in range(rounds):
        order = [("raw", raw), ("ours", ours)]
        for name, rates in order if n % 2 == 0 else reversed(order):  # neither always meets a warmer broker
            bench_candlepin.fill(settings, messages)
            seconds = (
                bench_candlepin.raw_consumer(settings, messages)
                if name == "raw"
                else bench_candlepin.our_listener(messages, bench_candlepin.bench_fence())
            )
            rates.append((messages + 1) / seconds)
    return statistics.median(raw), statistics.median(ours)


SECTIONS = ("queue", "stomp", "failover", "web", "memory", "io", "cpu", "batch", "inbox", "web-io")


def sections(value: str) -> set[str]:
    chosen = {name.strip() for name in value.split(",") if name.strip()}
    unknown = chosen - set(SECTIONS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return chosen


def web_rows(label: str, web: dict[str, list[float]], goal: str = "") -> list[tuple[str, str, str, str]]:
    run, standby = web["runner"], web["standby"]
    p50, p99 = (percentile(run, 50), percentile(standby, 50)), (percentile(run, 99), percentile(standby, 99))
    return [
        (f"{label}, p50 (n={len(run)}/{len(standby)}; {web['drained'][0]:,.0f} events/s drained)",
         f"runner {p50[0]:.1f} ms", f"standby {p50[1]:.1f} ms", f"{p50[0] / p50[1]:.2f}"),
        (f"{label}, p99", f"runner {p99[0]:.1f} ms", f"standby {p99[1]:.1f} ms", f"{p99[0] / p99[1]:.2f}{goal}"),
    ]  # fmt: skip


def slow_rows(args, results: dict) -> list[tuple[str, str, str, str]]:
    """The rows of the slow-handler sections that ran (bench/slow_handlers.py)."""
    rows = []
    for threads, drained in results.get("io", {}).items():
        ideal = threads * slow.IO_RATE_PER_THREAD
        label = f"I/O-bound 20 ms handler, CONCURRENCY {threads}, events/s"
        if drained is None:
            rows.append((label, "n/a", f"ideal {ideal:,}", "not measured: no CONCURRENCY in this tree"))
        else:
            goal = " (goal >= 0.8)" if threads <= 16 else " (no goal)"
            note = f"{drained.rate / ideal:.2f}{goal}; busiest thread {drained.imbalance:.2f}x the mean"
            ours = f"{drained.rate:,.0f} (middle 80%: {drained.middle_rate:,.0f})"
            rows.append((label, ours, f"ideal {ideal:,}", note))
    if "cpu" in results:
        one, many, call = results["cpu"]
        label = f"CPU-bound {call * 1000:.2f} ms (CPU) handler, events/s ({args.cpu_events:,} events, median of 3)"
        cpu = (
            f"; CPU/event {many.cpu_per_event * 1000:.2f} vs {one.cpu_per_event * 1000:.2f} ms "
            f"({one.cpu_per_event / many.cpu_per_event:.2f})"
            if many
            else ""
        )
        rows.append(
            (label, f"CONCURRENCY {slow.CPU_CONCURRENCY}: {many.rate:,.0f}", f"CONCURRENCY 1: {one.rate:,.0f}",
             f"{many.rate / one.rate:.2f} (goal >= 0.9){cpu}")
            if many is not None
            else (label, "n/a", f"CONCURRENCY 1: {one.rate:,.0f}", "not measured: no CONCURRENCY in this tree")
        )  # fmt: skip
    if "batch" in results:
        batch = results["batch"]
        label = f"batch handler, {args.batch_events:,} applicability events (50 ms + 0.1 ms/host)"
        other = f"per event {batch['per_event_seconds']:,.0f} s (extrapolated from {args.batch_sample})"
        if batch["batch_seconds"] is None:
            rows.append((label, "n/a", other, "not measured: no batch_size in this tree"))
        else:
            rows.append(
                (label, f"{batch['batch_seconds']:.1f} s ({batch['batch_calls']} calls of up to 500)", other,
                 f"{batch['per_event_seconds'] / batch['batch_seconds']:.0f}x faster")
            )  # fmt: skip
    if "inbox" in results:
        direct, inbox = results["inbox"]["direct"], results["inbox"]["inbox"]
        what = f"{args.inbox_messages:,} compliance.created, {args.inbox_hosts} hosts, 20 ms handler"
        direct_rate = f"without {direct['ack_rate']:,.0f} (sampled: {direct['acked']} acked)"
        per_message = direct["runs"] / max(1, direct["acked_in_all"])
        direct_runs = f"without {args.inbox_messages * per_message:,.0f} (extrapolated)"
        if inbox is None:
            rows.append((f"Candlepin inbox: {what}, msg/s acked", "n/a", direct_rate, "not measured: no INBOX"))
            rows.append(("Candlepin inbox: handler runs", "n/a", direct_runs, ""))
        else:
            rows.append((f"Candlepin inbox: {what}, msg/s acked", f"{inbox['ack_rate']:,.0f}", direct_rate,
                         f"{inbox['ack_rate'] / direct['ack_rate']:.0f}x"))  # fmt: skip
            done = f"all done {inbox['drain_seconds']:.1f} s after the 1st burst; {inbox['dead']} dead"
            runs = f"{inbox['runs']:,} ({done})"
            rows.append(("Candlepin inbox: handler runs", runs, direct_runs,
                         f"{inbox['runs'] / args.inbox_messages:.3f} of the messages"))  # fmt: skip
    if "web-io" in results:
        web = results["web-io"]
        if web is None:
            rows.append(("web /api/ping, 16 I/O-bound handler threads", "n/a", "", "no CONCURRENCY in this tree"))
        else:
            rows += web_rows("web /api/ping, 16 I/O-bound handler threads", web, " (goal <= 1.25)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=sections, default=set(SECTIONS), metavar="SECTION,...",
                        help=f"run only these sections: {', '.join(SECTIONS)}")  # fmt: skip
    parser.add_argument("--events", type=int, default=20000, help="events per queue contender")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--messages", type=int, default=20000, help="messages per STOMP contender and round")
    parser.add_argument("--rounds", type=int, default=3, help="STOMP rounds (median)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--web-events", type=int, default=150000, help="events queued for the web window")
    parser.add_argument("--web-seconds", type=float, default=10.0)
    parser.add_argument("--memory-events", type=int, default=200000)
    parser.add_argument("--io-seconds", type=float, default=5.0, help="work per I/O-bound run at the ideal rate")
    parser.add_argument("--cpu-events", type=int, default=2000, help="events per CPU-bound run (3 runs each)")
    parser.add_argument("--batch-events", type=int, default=10000, help="applicability events of the batch run")
    parser.add_argument("--batch-sample", type=int, default=200, help="events of the per-event run (extrapolated)")
    parser.add_argument("--inbox-messages", type=int, default=5000, help="compliance.created messages per burst")
    parser.add_argument("--inbox-hosts", type=int, default=100)
    parser.add_argument("--inbox-sample", type=int, default=500, help="messages acked by the run without the inbox")
    parser.add_argument("--web-io-events", type=int, default=30000, help="I/O-bound events queued for the web window")
    parser.add_argument("--web-io-seconds", type=float, default=20.0, help="web window under 16 I/O-bound threads")
    parser.add_argument("--soak", type=int, metavar="MINUTES", help="soak mode instead of the benchmarks")
    parser.add_argument("--soak-rate", type=int, default=2000, help="events offered per second in soak mode")
    args = parser.parse_args()
    only = args.only

    bench_queue.create_database()
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    print(f"logs: {LOG_DIR}")
    if args.soak:
        soak(args.soak, args.soak_rate)
        return

    rows = []
    if "queue" in only:
        print("event queue ...", flush=True)
        baseline = bench_queue.bench_katello_style(args.events)
        ours = bench_queue.bench_ours(args.events)
        floor = bench_queue.bench_raw_floor(args.events)
        p50, p99 = bench_queue.bench_latency(args.latency_samples)
        rows += [
            ("event queue, events/s (no-op handler)", f"{ours:,.0f}", f"Katello-style {baseline:,.0f}",
             f"{ours / baseline:.0f}x; {ours / floor:.2f} of raw floor {floor:,.0f}"),
            ("enqueue-to-start latency (NOTIFY)", f"p50 {p50:.2f} ms", f"p99 {p99:.2f} ms", "target p50 < 10 ms"),
        ]  # fmt: skip
    if "stomp" in only:
        print("STOMP ...", flush=True)
        raw_stomp, our_stomp = stomp_rates(args.messages, args.rounds)
        rows.append(("STOMP, msg/s", f"{our_stomp:,.0f}", f"raw stomp.py {raw_stomp:,.0f}",
                     f"{our_stomp / raw_stomp:.2f}"))  # fmt: skip
    if "failover" in only:
        print("failover ...", flush=True)
        failovers = bench_failover(args.kills)
        median, worst = statistics.median(failovers), max(failovers)
        rows.append((f"failover, SIGKILL to next event (n={len(failovers)})", f"median {median:.3f} s",
                     f"max {worst:.3f} s", "target < 1 s"))  # fmt: skip
    if "web" in only:
        print("web overhead ...", flush=True)
        rows += web_rows("web /api/ping served", bench_web_overhead(args.web_events, args.web_seconds))
    if "memory" in only:
        print("memory ...", flush=True)
        before, after = bench_memory(10000, args.memory_events)
        rows.append((f"runner RSS, warm-up then +{args.memory_events:,} events", f"{before:.1f} -> {after:.1f} MB",
                     "", f"growth {after - before:+.1f} MB"))  # fmt: skip

    slow_results: dict = {}
    if only & {"io", "cpu", "batch", "inbox", "web-io"}:
        truncate()
        print(
            f"slow handlers ... (CONCURRENCY: {slow.has_concurrency()}, batch handlers: {slow.has_batch_handlers()}, "
            f"INBOX: {slow.has_inbox()})",
            flush=True,
        )
    if "io" in only:
        slow_results["io"] = slow.bench_io(args.io_seconds)
    if "cpu" in only:
        slow_results["cpu"] = slow.bench_cpu(args.cpu_events)
    if "batch" in only:
        slow_results["batch"] = slow.bench_batch(args.batch_events, args.batch_sample)
    if "inbox" in only:
        slow_results["inbox"] = slow.bench_inbox(args.inbox_messages, args.inbox_hosts, args.inbox_sample)
    if "web-io" in only:
        print("web overhead, 16 I/O-bound handler threads ...", flush=True)
        slow_results["web-io"] = (
            bench_web_overhead(
                args.web_io_events, args.web_io_seconds, lambda count, tag: slow.fill("bench.io", count, tag),
                DJANGO_SETTINGS_MODULE="bench.settings", BENCH_CONCURRENCY="16",
            )
            if slow.has_concurrency()
            else None
        )  # fmt: skip
    rows += slow_rows(args, slow_results)

    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    header = ("measure", "ours", "baseline / other", "ratio / note")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
