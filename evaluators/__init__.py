"""Built-in evaluators, one module each (imported as ``erasebench.evaluators``)."""
