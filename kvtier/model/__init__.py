"""The reference Llama-family decoder that runs on kvtier's paged cache: layers, paged attention
through kvtier.ops, the forward batch, weights from HF folders and presets, and a plain generate
loop. Modules are imported where used; importing this package loads nothing."""
