"""bench/stream.py's settings for the layer comparison: the bench settings (production) with the channels_redis
*core* layer instead of the pub/sub layer, tuned as shared/ENVIRONMENT.md says it must be.

- `capacity`: the core layer buffers each process's messages in one queue per channel, capped at `capacity`
  (100 by default) and dropping the oldest beyond it; the stream hub reads ONE channel per process, so a burst
  of events for many users would be cut at 100. Raised to 100,000 (as the in-memory layer of base.py).
- `max_connections`: redis-py 8's pool defaults to 100 connections, and a burst of socket connects (each one a
  `group_add`) fails with "Too many connections" beyond it. Raised to 1,000.
- `group_expiry`: ten years, as the in-memory layer: the hub's group memberships must not lapse while its
  sockets stay connected (the default is a day).
"""

import os

from bench.settings import *  # noqa: F403

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": os.environ["REDIS_URL"], "max_connections": 1000}],
            "prefix": "wbffcore",
            "capacity": 100_000,
            "expiry": 60,
            "group_expiry": 10 * 365 * 86400,
        },
    }
}
