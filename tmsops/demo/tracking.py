"""tracking-service: ``GET /tracking/{shipment_id}``, tracking events generated from the id, no database.

Run one replica with ``PORT=8082 python -m tmsops.demo.tracking``; the service-time variables
are those of :mod:`tmsops.demo.common` (defaults: 2 ms CPU, 20 ms wait, 8 at once).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tmsops.demo.common import CITIES, Profile, build_app, run

EVENT_FLOW = ("label_created", "picked_up", "departed_facility", "arrived_facility", "out_for_delivery", "delivered")
FIRST_EVENT = datetime(2024, 1, 1)


def tracking_events(shipment_id: int) -> list[dict[str, Any]]:
    """The same events for the same id, every time: a prefix of the usual flow, hours apart."""
    rng = random.Random(shipment_id)
    at = FIRST_EVENT + timedelta(minutes=10 * shipment_id)
    events = []
    for sequence, status in enumerate(EVENT_FLOW[: rng.randint(1, len(EVENT_FLOW))], start=1):
        at += timedelta(minutes=rng.randint(30, 720))
        events.append({"sequence": sequence, "status": status, "location": rng.choice(CITIES), "at": at.isoformat()})
    return events


async def get_tracking(request: Request) -> Response:
    """The tracking events of one shipment."""
    shipment_id = request.path_params["shipment_id"]
    return JSONResponse({"shipment_id": shipment_id, "events": tracking_events(shipment_id)})


def create_app() -> Starlette:
    """The tracking-service app, its service time from the environment."""
    routes = [Route("/tracking/{shipment_id:int}", get_tracking, methods=["GET"])]
    return build_app(routes, Profile.from_env())


def main() -> None:
    run("tracking-service", create_app)


if __name__ == "__main__":
    main()
