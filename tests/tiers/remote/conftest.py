from tests.tiers.remote.redis_server import (  # noqa: F401  (the fixtures)
    redis_cluster,
    redis_server,
    tls_redis_server,
)
