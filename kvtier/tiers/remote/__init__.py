"""The remote tier: a Redis or Valkey server shared by engines (redis-py; `pip install kvtier[redis]`)."""
from kvtier.tiers.remote.store import RemoteStore

__all__ = ["RemoteStore"]
