"""The optimizer's Redis cache advisor (issue 7).

- :class:`actuators.optimizer.cache.advisor.CacheAdvisor`: ``analyze()`` samples the traffic
  and recommends ``maxmemory``, the eviction policy and TTLs per key pattern;
- :func:`actuators.optimizer.cache.apply.apply_change`, :func:`~actuators.optimizer.cache.apply.rollback`,
  :func:`~actuators.optimizer.cache.apply.recover`: journalled, measured, reversible changes;
- :mod:`~actuators.optimizer.cache.mrc` (hit-rate curves), :mod:`~actuators.optimizer.cache.redis_sim`
  (Redis's eviction simulated), :mod:`~actuators.optimizer.cache.sampler` (MONITOR, SHARDS sampling),
  :mod:`~actuators.optimizer.cache.stats` (INFO, key sample), :mod:`~actuators.optimizer.cache.memory`
  (keys to bytes), :mod:`~actuators.optimizer.cache.connection` (errors).
"""
