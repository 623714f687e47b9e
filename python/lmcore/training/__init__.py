"""Training: the recipe and its learning-rate schedules (``config``), a run made from the flags
(``run``), the loop (``loop``), evaluation (``evaluation``), when to save (``saving``), metrics
(``metrics``), data parallelism on MPI (``distributed``), and a trained model's vocabulary grown for
new tokens (``vocab_extend``)."""
