"""Training: a run made from the flags (``run``) on its data (``data``: a text's tokens or packed
conversations), the loop (``loop``), the learning-rate schedules (``schedule``), evaluation
(``evaluation``), when to save (``saving``), the stop signals (``signals``), metrics
(``metrics``), data parallelism on MPI (``distributed``), and a trained model's vocabulary grown for
new tokens (``vocab_extend``). The recipe itself is ``lmcore/config.py``."""
