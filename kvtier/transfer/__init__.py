"""Moving blocks between tiers off the scheduler's thread: the read-first executor, the engine
(onloads, spills, awaitable reads and writes), its asyncio layer, and device->host staging."""
