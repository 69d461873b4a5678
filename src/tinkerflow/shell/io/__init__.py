"""Run I/O (shell): the run directory and its state (``run``, ``run_dir``), metrics sinks, progress and charts,
data sources (``data``: JSONL / in memory / Hugging Face rows; ``sources``: ``JsonlSource``), pipeline executors
(``executors``: worker processes), tokenize-ahead prefetching (``prefetch``) and tokenizer loading
(``tokenizers``: files, cache, hub)."""
