"""Serving a model: an OpenAI-compatible HTTP API with a web chat page (`app`: wiring and small handlers;
`completions`: chat completions, streamed or not; `schemas`: request validation at the edge; `errors`: OpenAI's error
shape; `guard`: body limits and the API key as ASGI middleware), the continuous-batching decoding thread behind it
(`scheduler`) and the terminal chat (`repl`). `cli` holds the `chatloom serve` and `chatloom chat` commands."""
