"""Run I/O (shell): the run directory, metrics sinks, charts, data sources, tokenizer loading."""
