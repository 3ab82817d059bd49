"""A TMS database with realistic data and its workload, for the optimizer's demo, tests and benchmark.

Customers, their shipments and the shipments' tracking events, with only the primary keys
indexed: the reads a TMS serves all day (a customer's recent shipments, a shipment's
tracking history, a login by e-mail, the exception queue, a customer's latest events) then
scan whole tables, as an application whose indexes were never designed does.

``load`` builds it with set-based SQL (a million rows in seconds); ``Workload`` runs the reads
and writes with real parameter values, as the application would, through psycopg.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

SCHEMA = """
DROP TABLE IF EXISTS tracking_events, shipments, customers;
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    region text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE shipments (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL,
    origin text NOT NULL,
    destination text NOT NULL,
    status text NOT NULL,
    weight_kg numeric(8, 2) NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE tracking_events (
    id bigserial PRIMARY KEY,
    shipment_id bigint NOT NULL,
    status text NOT NULL,
    location text NOT NULL,
    occurred_at timestamptz NOT NULL
);
"""

CITIES = ("Berlin", "Hamburg", "Munich", "Cologne", "Frankfurt", "Stuttgart", "Leipzig", "Dresden", "Bremen", "Hanover")
STATUSES = ("created", "picked_up", "in_transit", "out_for_delivery", "delivered", "exception")
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_DAYS = 300

_LOAD = """
INSERT INTO customers (name, email, region, created_at)
SELECT 'Customer ' || g, 'customer' || g || '@example.com', (ARRAY{cities})[1 + mod(g, 10)],
       %(epoch)s::timestamptz + mod(g, {span}) * interval '1 day'
FROM generate_series(1, %(customers)s) g;

INSERT INTO shipments (customer_id, origin, destination, status, weight_kg, created_at, updated_at)
SELECT 1 + mod(hashint4(g) & 2147483647, %(customers)s),
       (ARRAY{cities})[1 + mod(g, 10)], (ARRAY{cities})[1 + mod(g / 10, 10)],
       CASE WHEN mod(g, 100) = 0 THEN 'exception' WHEN mod(g, 7) = 0 THEN 'in_transit' ELSE 'delivered' END,
       mod(g, 5000) / 100.0 + 0.5,
       %(epoch)s::timestamptz + (g::float / %(shipments)s * {span}) * interval '1 day',
       %(epoch)s::timestamptz + (g::float / %(shipments)s * {span} + 2) * interval '1 day'
FROM generate_series(1, %(shipments)s) g;

INSERT INTO tracking_events (shipment_id, status, location, occurred_at)
SELECT s.id, (ARRAY{statuses})[1 + e], (ARRAY{cities})[1 + mod(s.id + e, 10)],
       s.created_at + e * interval '9 hours'
FROM shipments s, generate_series(0, %(events)s - 1) e;
"""


def _array(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


def load(dsn: str, *, customers: int = 50_000, shipments: int = 400_000, events_per_shipment: int = 3) -> int:
    """(Re)create the tables with data and fresh planner statistics; returns the number of rows."""
    script = _LOAD.format(cities=_array(CITIES), statuses=_array(STATUSES), span=SPAN_DAYS)
    params = {"epoch": EPOCH, "customers": customers, "shipments": shipments, "events": events_per_shipment}
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(SCHEMA)
        for statement in (part.strip() for part in script.split(";\n")):
            if statement:
                connection.execute(statement, params)
        connection.execute("ANALYZE customers, shipments, tracking_events")
    return customers + shipments + shipments * events_per_shipment


@dataclass
class Workload:
    """The application's statements with parameter values drawn as its users would send them."""

    customers: int
    shipments: int
    seed: int = 11
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def reads(self) -> list[tuple[str, Callable[[], tuple[object, ...]]]]:
        """(statement, parameters) pairs with the share each has of the reads, as weights by repetition."""
        customer = self._customer
        return [
            *[
                (
                    "SELECT id, status, origin, destination, created_at FROM shipments "
                    "WHERE customer_id = %s ORDER BY created_at DESC, id DESC LIMIT 20",
                    lambda: (customer(),),
                )
            ]
            * 3,
            *[
                (
                    "SELECT status, location, occurred_at FROM tracking_events "
                    "WHERE shipment_id = %s ORDER BY occurred_at",
                    lambda: (self._shipment(),),
                )
            ]
            * 3,
            *[
                (
                    "SELECT id, name, region FROM customers WHERE email = %s",
                    lambda: (f"customer{customer()}@example.com",),
                )
            ]
            * 2,
            (
                "SELECT count(*) FROM shipments WHERE status = %s AND created_at >= %s",
                lambda: ("exception", self._recent_day()),
            ),
            (
                "SELECT e.status, e.occurred_at FROM shipments s JOIN tracking_events e ON e.shipment_id = s.id "
                "WHERE s.customer_id = %s ORDER BY e.occurred_at DESC LIMIT 10",
                lambda: (customer(),),
            ),
            ("SELECT * FROM shipments WHERE id = %s", lambda: (self._shipment(),)),
        ]

    def writes(self) -> list[tuple[str, Callable[[], tuple[object, ...]]]]:
        now = datetime.now(UTC)
        return [
            (
                "INSERT INTO shipments (customer_id, origin, destination, status, weight_kg, created_at, updated_at) "
                "VALUES (%s, %s, %s, 'created', %s, %s, %s)",
                lambda: (self._customer(), self.rng.choice(CITIES), self.rng.choice(CITIES), 3.5, now, now),
            ),
            (
                "INSERT INTO tracking_events (shipment_id, status, location, occurred_at) VALUES (%s, %s, %s, %s)",
                lambda: (self._shipment(), self.rng.choice(STATUSES), self.rng.choice(CITIES), now),
            ),
            *[
                (
                    "INSERT INTO tracking_events (shipment_id, status, location, occurred_at) VALUES (%s, %s, %s, %s)",
                    lambda: (self._shipment(), "in_transit", self.rng.choice(CITIES), now),
                )
            ]
            * 2,
            (
                "UPDATE shipments SET status = %s, updated_at = now() WHERE id = %s",
                lambda: ("in_transit", self._shipment()),
            ),
        ]

    def run_reads(self, connection: psycopg.Connection[object], count: int) -> dict[str, Any]:
        """``count`` reads in a fixed random order: total and per statement time (``seconds``, ``count``)."""
        statements = self.reads()
        per_statement: dict[str, dict[str, float]] = {}
        started = time.perf_counter()
        for _ in range(count):
            query, params = self.rng.choice(statements)
            began = time.perf_counter()
            connection.execute(query, params()).fetchall()
            entry = per_statement.setdefault(query, {"seconds": 0.0, "count": 0})
            entry["seconds"] += time.perf_counter() - began
            entry["count"] += 1
        return {"total_s": time.perf_counter() - started, "count": count, "per_statement": per_statement}

    def run_writes(self, connection: psycopg.Connection[object], seconds: float, limit: int | None = None) -> float:
        """Writes, each its own transaction, for ``seconds`` (or until ``limit`` writes); returns writes per second."""
        statements = self.writes()
        done, deadline = 0, time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline and (limit is None or done < limit):
            query, params = self.rng.choice(statements)
            connection.execute(query, params())
            done += 1
        return done / (time.perf_counter() - started)

    def _customer(self) -> int:
        return self.rng.randint(1, self.customers)

    def _shipment(self) -> int:
        return self.rng.randint(1, self.shipments)

    def _recent_day(self) -> datetime:
        return EPOCH + timedelta(days=SPAN_DAYS - self.rng.randint(3, 14))
