"""Back ends for other frameworks: `hf` (transformers' Cache). Each imports its framework; this package does not."""
