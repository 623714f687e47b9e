"""Checkpoint policy: when the run is saved (every ``ckpt_interval`` steps, at the end, on a stop
signal), what a failed save means (the previous checkpoint stays, and the message says which one),
and the final weights. Writing itself is ``run_state``'s (and atomic)."""

from __future__ import annotations

from lmcore.atomic import remove_temp_files
from lmcore.checkpoint.file import CheckpointError, save_weights
from lmcore.checkpoint.state import CHECKPOINT_NAME, WEIGHTS_NAME, save_run
from lmcore.errors import TrainingError
from lmcore.training.run import Run


class Saver:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.writes = run.group.is_root  # in a data-parallel run, rank 0 alone writes
        # The step of the checkpoint on disk: a resumed run starts from one, a fresh run has none yet.
        self.saved_step = run.iter_num if run.ckpt_path.is_file() else None
        for name in (CHECKPOINT_NAME, WEIGHTS_NAME):
            if self.writes:
                remove_temp_files(run.out_dir / name)  # half-written by a run that was killed

    def kept(self) -> str:
        """Which checkpoint a failure leaves, for its message."""
        if self.saved_step is None:
            return "no checkpoint has been written yet"
        return f"the checkpoint of step {self.saved_step} ({self.run.ckpt_path}) is intact; --resume continues from it"

    def due(self) -> bool:
        return self.run.iter_num % self.run.cfg.ckpt_interval == 0

    def save(self) -> None:
        """The whole run at its current step; a failure leaves the previous checkpoint as it was."""
        step = self.run.iter_num
        if not self.writes:
            self.saved_step = step
            return
        try:
            save_run(self.run.ckpt_path, self.run.model, self.run.checkpoint_meta())
        except OSError as e:
            raise TrainingError(f"checkpoint of step {step} not written ({e.strerror or e}); {self.kept()}") from None
        except CheckpointError as e:  # the weights overflowed in the last steps
            raise TrainingError(f"training stopped at step {step}: {e}; {self.kept()}") from None
        self.saved_step = step

    def save_weights(self) -> None:
        """The final weights under plain names, for any safetensors reader."""
        model, path = self.run.model, self.run.out_dir / WEIGHTS_NAME
        if not self.writes:
            return
        try:
            save_weights(path, {n: model.get_param(n) for n in model.param_names()})
        except OSError as e:
            raise TrainingError(f"final weights not written ({e.strerror or e}): {path}; {self.kept()}") from None
