"""Training text: corpora read from files or memory (``corpus``), the named datasets (``datasets``),
the offline plays (``plays``), the token ids of each split, cached (``tokens``), and batches of
them (``batches``)."""
