"""``python -m lmcore.serve``'s parts: an OpenAI-compatible HTTP API over the engine's KV cache.

``errors.py`` (OpenAI's error shape), ``body.py`` (reading and parsing a request body),
``schemas.py`` (a request's fields checked into a ``Generation``), ``stops.py`` (stop strings
across streamed text), ``sequence.py`` (one sequence's tokens through its own cache),
``worker.py`` (the slots, the queue and the one thread that runs the engine), ``responses.py``
(OpenAI's response and chunk shapes), ``app.py`` (the Starlette routes), ``static/`` (the chat page).
"""
