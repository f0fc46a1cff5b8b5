from tests.tiers.remote.redis_server import redis_cluster, redis_server  # noqa: F401  (the fixtures)
