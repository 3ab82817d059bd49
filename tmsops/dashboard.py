"""The page shell of every service's ``GET /dashboard``.

A page loads only this service's own ``/static/dashboard.css`` and ``/static/charts.js`` (no CDN:
clusters without internet access read it too), embeds its data as JSON and draws it with a
``render(data)`` function of its own; ``tmsops.live`` draws the embedded data at once, then
fetches the same JSON (``Accept: application/json``) every ``refresh_s`` seconds and draws again.
The header links the sibling dashboards (on this host, at the configured ports), ``/docs`` and
``/health``.
"""

from __future__ import annotations

import html
import json
from typing import Any

from tmsops.settings import ServicePorts

SHELL = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>tmsops {service} dashboard</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/dashboard.css"><script src="/static/charts.js"></script></head>
<body data-service="{service}" data-refresh="{refresh}">
<header class="top"><span class="brand">tmsops</span><nav>{links}</nav>
<span class="updated" id="updated">rendered on the server</span></header>
<main><h1>{title}</h1><p class="lead">{lead}</p><div id="root"></div></main>
<script id="data" type="application/json">{data}</script>
<script>
"use strict";
{script}
tmsops.live(render);
</script></body></html>
"""


def render_page(
    service: str,
    *,
    title: str,
    lead: str,
    data: dict[str, Any],
    script: str,
    ports: ServicePorts,
    refresh_s: float = 15,
) -> str:
    """The dashboard of ``service``: ``script`` defines ``render(data)``, which draws into ``#root``."""
    return SHELL.format(
        service=html.escape(service),
        refresh=f"{refresh_s:g}",
        links=_links(service, ports),
        title=html.escape(title),
        lead=html.escape(lead),
        data=json.dumps(data).replace("</", "<\\/"),
        script=script,
    )


def _links(current: str, ports: ServicePorts) -> str:
    dashboards = [
        '<a class="here" href="/dashboard">' + name + "</a>"
        if name == current
        else f'<a data-port="{port}" href="/dashboard">{name}</a>'
        for name, port in ports.model_dump().items()
    ]
    own = ['<a href="/docs">API docs</a>', '<a href="/health">health</a>', '<a href="/metrics">metrics</a>']
    return "".join(dashboards + own)
