"""`kvtier demo`: a real model answering a multi-turn chat on the tiered cache (kvtier/demo/run.py)."""
