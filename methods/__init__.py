"""Built-in erasure methods, one self-contained module each (imported as ``erasebench.methods``)."""
