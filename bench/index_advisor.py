"""Index advice, measured: tmsops's recommendations against pg_qualstats's on the same captured workload.

A TMS database (customers, shipments, tracking events; about 1.65 M rows at the default
scale) with only primary keys is loaded into the local PostgreSQL. A mixed read/write
workload runs once and is captured (pg_stat_statements, pg_qualstats). Both advisors are
asked right after the capture, so they see the same workload. Then, in turn:

- baseline: the reads (a fixed, seeded sequence) timed and the write throughput measured;
- tmsops: its recommended indexes applied the way the service applies them (each timed
  before and after and kept only if it helps), the reads and writes measured again, the
  indexes dropped;
- pg_qualstats: ``pg_qualstats_index_advisor()``'s indexes created, the same measurements,
  dropped.

Then the standard pgbench schema and workload, where every statement is served by a primary
key: the right number of new indexes is zero.

Prints one JSON object; ``summary`` holds ``read_speedup`` (the mean time of a read without
the indexes over the mean with tmsops's; the reads are the same seeded sequence, 300 of them
without indexes and 3000 with, so that fast reads are timed over enough of them),
``read_speedup_pg_qualstats``, ``write_throughput_change_pct`` (with tmsops's
indexes, against the mean of the baseline measured first and again last, without indexes)
and ``pgbench_new_indexes``.

Needs a PostgreSQL with pg_stat_statements and pg_qualstats preloaded and HypoPG installed
(``.ci/run`` sets that up); ``--dsn`` names a superuser connection to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from actuators.optimizer.database.advisor import advise
from actuators.optimizer.database.apply import apply_index
from actuators.optimizer.database.connection import Database
from actuators.optimizer.journal import OptimizationJournal, Status
from tmsops.demo.tms_database import Workload, load
from tmsops.settings import DatabaseOptimization
from tmsops.state import make_engine

EXTENSIONS = ("pg_stat_statements", "hypopg", "pg_qualstats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--shipments", type=int, default=400_000)
    parser.add_argument("--reads", type=int, default=300, help="reads of the baseline (no index) measurement")
    parser.add_argument("--indexed-reads", type=int, default=3000, help="reads of each measurement with indexes")
    parser.add_argument("--write-seconds", type=float, default=10.0, help="write phase length per measurement")
    parser.add_argument("--pgbench-scale", type=int, default=5)
    args = parser.parse_args()

    report: dict[str, Any] = {"scale": {"customers": args.customers, "shipments": args.shipments}}
    tms = fresh_database(args.dsn, "tmsops_bench_tms")
    started = time.perf_counter()
    report["rows"] = load(tms, customers=args.customers, shipments=args.shipments)
    report["load_s"] = round(time.perf_counter() - started, 1)
    progress(f"loaded {report['rows']} rows in {report['load_s']} s")

    workload = lambda: Workload(args.customers, args.shipments)  # noqa: E731 - the same seeded sequence each time
    with psycopg.connect(tms, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_statements_reset(), pg_qualstats_reset()")
        capture = workload()
        capture.run_reads(connection, args.reads)
        capture.run_writes(connection, args.write_seconds / 2)
        progress("workload captured")
        qualstats_advice = pg_qualstats_advice(connection)
    policy = DatabaseOptimization()
    started = time.perf_counter()
    advice = asyncio.run(advise(Database(tms), policy))
    report["tmsops_advice_s"] = round(time.perf_counter() - started, 2)
    progress(f"tmsops recommends {len(advice.recommendations)}, pg_qualstats {len(qualstats_advice)}")

    with psycopg.connect(tms, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")  # as a database that has been running: hint bits and visibility set
    report["baseline"] = measure(tms, workload(), args.reads, args.write_seconds)
    progress(f"baseline: {report['baseline']['read_ms']} ms a read, {report['baseline']['writes_per_s']} writes/s")

    with tempfile.TemporaryDirectory() as state:
        journal = OptimizationJournal(make_engine(f"sqlite:///{Path(state) / 'journal.db'}"))
        entries = [
            asyncio.run(apply_index(Database(tms), journal, policy, item.candidate(), service="bench"))
            for item in advice.recommendations
        ]
    kept = {entry.subject: entry.change["sql"] for entry in entries if entry.status == Status.KEPT}
    ours_first = {**measure(tms, workload(), args.indexed_reads, args.write_seconds), **index_sizes(tms, list(kept))}
    drop_indexes(tms, list(kept))
    progress(f"tmsops: {ours_first['read_ms']} ms a read, {ours_first['writes_per_s']} writes/s")

    # In the order tmsops, pg_qualstats, pg_qualstats, tmsops, so that what drifts during the run
    # (the tables grow, caches warm, the machine is shared) weighs on both alike; each figure is
    # the mean of its two rounds.
    theirs_rounds = []
    for _ in range(2):
        created = create_indexes(tms, {f"pg_qualstats_advice_{n}": sql for n, sql in enumerate(qualstats_advice)})
        theirs_rounds.append(
            {**measure(tms, workload(), args.indexed_reads, args.write_seconds), **index_sizes(tms, created)}
        )
        drop_indexes(tms, created)
        progress(
            f"pg_qualstats: {theirs_rounds[-1]['read_ms']} ms a read, {theirs_rounds[-1]['writes_per_s']} writes/s"
        )
    create_indexes(tms, kept)
    ours_second = {**measure(tms, workload(), args.indexed_reads, args.write_seconds), **index_sizes(tms, list(kept))}
    drop_indexes(tms, list(kept))
    progress(f"tmsops: {ours_second['read_ms']} ms a read, {ours_second['writes_per_s']} writes/s")
    report["tmsops"] = {
        **mean_of(ours_first, ours_second),
        "recommended": [item.definition for item in advice.recommendations],
        "applied": [
            {"index": e.subject, "status": e.status.value, "reason": e.reason, "gain": (e.after or {}).get("gain")}
            for e in entries
        ],
        "rounds": [ours_first, ours_second],
    }
    report["pg_qualstats"] = {
        **mean_of(*theirs_rounds),
        "recommended": qualstats_advice,
        "rounds": theirs_rounds,
    }

    # The write rate drifts too: the baseline is measured again last, without any of the indexes,
    # and the change is against the mean of the two baselines.
    report["baseline_again"] = measure(tms, workload(), 20, args.write_seconds)
    writes_baseline = (report["baseline"]["writes_per_s"] + report["baseline_again"]["writes_per_s"]) / 2
    progress(f"baseline again: {report['baseline_again']['writes_per_s']} writes/s")
    report["pgbench"] = pgbench(args)
    baseline, ours, theirs = report["baseline"], report["tmsops"], report["pg_qualstats"]
    report["per_query_speedup"] = {
        "tmsops": per_query(baseline, ours),
        "pg_qualstats": per_query(baseline, theirs),
    }
    report["summary"] = {
        "read_speedup": round(baseline["read_ms"] / ours["read_ms"], 2),
        "read_speedup_pg_qualstats": round(baseline["read_ms"] / theirs["read_ms"], 2),
        "write_throughput_change_pct": round(100 * (ours["writes_per_s"] / writes_baseline - 1), 2),
        "write_throughput_change_pct_pg_qualstats": round(100 * (theirs["writes_per_s"] / writes_baseline - 1), 2),
        "tmsops_indexes": ours["indexes"],
        "pg_qualstats_indexes": theirs["indexes"],
        "pgbench_new_indexes": report["pgbench"]["tmsops_new_indexes"],
    }
    print(json.dumps(report, indent=2))


def progress(message: str) -> None:
    print(f"[index_advisor] {message}", file=sys.stderr, flush=True)


def fresh_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as connection:
        for extension in EXTENSIONS:
            connection.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}")
    return dsn


def measure(dsn: str, workload: Workload, reads: int, write_seconds: float) -> dict[str, Any]:
    """Mean time of a read over ``reads`` reads (after a warm-up), and the write rate over ``write_seconds``."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        workload.run_reads(connection, 20)  # warm the buffer cache and the plans
        timed = workload.run_reads(connection, reads)
        writes_per_s = workload.run_writes(connection, write_seconds)
    return {
        "reads": reads,
        "read_ms": round(1000 * timed["total_s"] / reads, 4),
        "per_query_ms": {
            query: round(1000 * entry["seconds"] / entry["count"], 4) for query, entry in timed["per_statement"].items()
        },
        "writes_per_s": round(writes_per_s, 1),
    }


def per_query(baseline: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    return {
        query: round(ms / other["per_query_ms"][query], 2)
        for query, ms in baseline["per_query_ms"].items()
        if other["per_query_ms"].get(query)
    }


def pg_qualstats_advice(connection: psycopg.Connection[Any]) -> list[str]:
    """pg_qualstats's index advice for the captured workload, as CREATE INDEX statements."""
    row = connection.execute("SELECT pg_qualstats_index_advisor() AS advice").fetchone()
    advice = row[0] if row else {}
    # It can name the same index once per predicate it serves: each distinct one is created once.
    return list(dict.fromkeys(str(statement) for statement in (advice or {}).get("indexes") or []))


def create_indexes(dsn: str, statements: dict[str, str]) -> list[str]:
    """Create each index under its name (the key); returns the names."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        for name, statement in statements.items():
            named = re.sub(r"^CREATE INDEX (CONCURRENTLY )?(\"[^\"]+\" )?ON", f'CREATE INDEX "{name}" ON', statement)
            connection.execute(named)
    return list(statements)


def mean_of(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The two rounds' mean read time (overall and per statement), write rate, and the indexes' sizes."""
    return {
        "read_ms": round((first["read_ms"] + second["read_ms"]) / 2, 4),
        "per_query_ms": {
            query: round((ms + second["per_query_ms"][query]) / 2, 4) for query, ms in first["per_query_ms"].items()
        },
        "writes_per_s": round((first["writes_per_s"] + second["writes_per_s"]) / 2, 1),
        "indexes": first["indexes"],
        "index_bytes": first["index_bytes"],
        "index_sizes": first["index_sizes"],
    }


def index_sizes(dsn: str, names: list[str]) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        sizes = {
            name: int(connection.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()[0])  # type: ignore[index]
            for name in names
        }
    return {"indexes": len(names), "index_bytes": sum(sizes.values()), "index_sizes": sizes}


def drop_indexes(dsn: str, names: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as connection:
        for name in names:
            connection.execute(f'DROP INDEX IF EXISTS "{name}"')


def pgbench(args: argparse.Namespace) -> dict[str, Any]:
    """pgbench's own schema and TPC-B-like workload: every statement has its primary key."""
    dsn = fresh_database(args.dsn, "tmsops_bench_pgbench")
    target = conninfo_to_dict(dsn)
    base = ["pgbench", "-h", str(target.get("host", "127.0.0.1")), "-p", str(target.get("port", 5432))]
    base += ["-U", str(target.get("user", "postgres")), str(target["dbname"])]
    subprocess.run([*base[:-1], "-i", "-q", "-s", str(args.pgbench_scale), base[-1]], check=True, capture_output=True)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_statements_reset(), pg_qualstats_reset()")
    run = subprocess.run(
        [*base[:-1], "-T", "15", "-c", "2", "-M", "prepared", base[-1]], check=True, capture_output=True, text=True
    )
    advice = asyncio.run(advise(Database(dsn), DatabaseOptimization()))
    with psycopg.connect(dsn, autocommit=True) as connection:
        theirs = pg_qualstats_advice(connection)
    tps = next((line for line in run.stdout.splitlines() if line.startswith("tps")), "")
    return {
        "scale": args.pgbench_scale,
        "workload": tps,
        "statements": advice.statements,
        "tmsops_new_indexes": len(advice.recommendations),
        "tmsops_recommended": [item.definition for item in advice.recommendations],
        "pg_qualstats_recommended": theirs,
    }


if __name__ == "__main__":
    main()
