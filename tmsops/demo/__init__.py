"""The demo TMS workload: api-gateway -> shipment-service and tracking-service.

Each service is a Starlette app run by uvicorn, one process per replica, on the port in
``$PORT``. Every replica has bounded concurrency and a realistic service time (real CPU
work plus a wait), so its capacity is about ``CONCURRENCY / service time`` and grows with
replicas. See :mod:`tmsops.demo.common` for the environment variables they share.
"""
