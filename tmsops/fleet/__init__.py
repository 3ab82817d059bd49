"""The local fleet: a supervisor of real replica processes behind per-service asyncio proxies.

Run it with ``tmsops fleet run`` (or ``python -m tmsops.fleet``); the services reach it
through its control API with :class:`tmsops.targets.fleet.FleetTarget`.
"""
