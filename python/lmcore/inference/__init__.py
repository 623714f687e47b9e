"""Inference: sampling tokens from a model, with or without the key/value cache (``sampling``), and
a multi-turn conversation kept in the cache between turns (``chat_session``)."""
