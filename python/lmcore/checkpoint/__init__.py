"""Checkpoints: one safetensors file with checked headers, written atomically (``file``), and a
training run's whole state in it, to and from a model (``state``). When a run saves is the
training loop's policy (``lmcore/training/saving.py``)."""
