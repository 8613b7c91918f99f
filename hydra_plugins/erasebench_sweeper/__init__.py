"""erasebench's Hydra sweeper (``hydra/sweeper=erasebench``, the default in erasebench's config)."""
