"""Serving a model: an OpenAI-compatible HTTP API with a web chat page (`app`), the batching worker behind it
(`scheduler`) and the terminal chat (`repl`). `cli` holds the `chatloom serve` and `chatloom chat` commands."""
