"""The training loop: step, log, evaluate, checkpoint, until ``max_iters``, the target loss or a stop signal."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import lmcore
from lmcore.checkpoint.state import WEIGHTS_NAME
from lmcore.errors import TrainingError
from lmcore.progress import Progress
from lmcore.training.evaluation import training_loss, validation
from lmcore.training.metrics import MetricsLog, plot_losses, rss_mb, trim_metrics
from lmcore.training.run import Run
from lmcore.training.saving import Saver
from lmcore.training.schedule import lr_at
from lmcore.training.signals import Interrupted, Stop, stop_signals


def train(run: Run) -> int:
    """Train ``run`` to its ``max_iters`` (or to the first evaluation at or below its target loss);
    the exit status (0, or 128 + a stop signal's number)."""
    cfg, model, group = run.cfg, run.model, run.group
    root = group.is_root  # in a data-parallel run, rank 0 alone writes metrics and plots
    run.started_at = time.monotonic()  # elapsed_s counts from here (plus a resumed run's earlier seconds)
    saver = Saver(run)
    tokens_per_step = cfg.batch_size * cfg.block_size
    metrics_path = run.out_dir / "metrics.jsonl"
    if root:
        trim_metrics(metrics_path, run.iter_num)
    record: dict[str, Any] = {}  # the last step's metrics
    progress: Progress | None = None
    reached: dict[str, Any] | None = None  # the first logged evaluation at or below the target loss

    def log_line(entry: dict[str, Any]) -> None:
        nonlocal reached
        entry = log.log({**entry, "elapsed_s": run.elapsed_s()})
        target = run.target_loss
        if reached is None and target is not None and "val_loss" in entry and entry["val_loss"] <= target:
            reached = entry

    with stop_signals() as stop:
        # Ranks get a stop signal at different moments: they stop together at a step's
        # all-reduce, never in the middle of an evaluation.
        eval_stop = stop if group.size == 1 else Stop()
        try:
            with MetricsLog(metrics_path, write=root) as log:
                if run.iter_num == 0:  # no steps yet: no rate
                    log_line(dict(step=0, train_loss=training_loss(run, eval_stop), lr=lr_at(0, cfg), tok_s=None,
                                  rss_mb=rss_mb(), **validation(run, saver.kept(), eval_stop)))
                if run.pending_record:  # the evaluation a stop signal cut short, done now
                    log_line({**run.pending_record, **validation(run, saver.kept(), eval_stop)})
                    run.pending_record = None
                    if root:
                        plot_losses(metrics_path, run.out_dir / "loss.png")
                progress = Progress(cfg.max_iters, start=run.iter_num)
                window_start, window_steps = time.perf_counter(), 0
                while run.iter_num < cfg.max_iters and stop.signal is None and reached is None:
                    lr = lr_at(run.iter_num, cfg)
                    x, y = run.sampler.next_batch()
                    try:
                        loss, grad_norm, told = group.step(model, x, y, lr, stop.signal)
                        stop.signal = stop.signal or told  # another rank's stop signal stops this one too
                    except lmcore.LmcoreError as e:  # a non-finite loss or gradient: nothing was updated
                        raise TrainingError(f"training stopped at step {run.iter_num + 1}: {e}; {saver.kept()}") from None
                    run.iter_num += 1
                    it = run.iter_num
                    if run.weight_check_interval and it % run.weight_check_interval == 0:
                        group.check_weights(model, it)
                    window_steps += 1
                    record = {}
                    evaluating = it % cfg.eval_interval == 0 or it == cfg.max_iters
                    if it % cfg.log_interval == 0 or evaluating:
                        elapsed = time.perf_counter() - window_start
                        record = dict(step=it, train_loss=loss, lr=lr, grad_norm=grad_norm,
                                      tok_s=window_steps * tokens_per_step / max(elapsed, 1e-9), rss_mb=rss_mb(),
                                      arena_mb=model.arena_high_water_bytes / 2**20)
                        progress.update(it, loss, record["tok_s"])
                        window_start, window_steps = time.perf_counter(), 0
                    if evaluating:
                        record.update(validation(run, saver.kept(), eval_stop))
                        progress.note(f"step {it}: train loss {loss:.4f}, val loss {record['val_loss']:.4f} "
                                      f"({record['val_bpc']:.4f} bits/char)")
                    if record:
                        log_line(record)
                    if "val_loss" in record:
                        if root:
                            plot_losses(metrics_path, run.out_dir / "loss.png")
                        window_start = time.perf_counter()  # eval time is not training throughput
                    if saver.due():
                        saver.save()
                if reached is not None:
                    progress.note(f"target val loss {run.target_loss:g} reached at step {reached['step']} after "
                                  f"{reached['elapsed_s']:.1f} s (val loss {reached['val_loss']:.4f})")
                saver.save()
                progress.close()
        except Interrupted:  # a stop signal during an evaluation: it is done on --resume instead
            if progress is not None:
                progress.close()
            if record.get("step") == run.iter_num > 0:
                run.pending_record = record
            saver.save()
        except OSError as e:  # the metrics log could not be written (a full disk, ...)
            raise TrainingError(f"training stopped at step {run.iter_num}: metrics log {metrics_path} not written "
                             f"({e.strerror or e}); {saver.kept()}") from None
    if stop.signal is not None:
        print(f"interrupted by {signal.Signals(stop.signal).name} at step {run.iter_num}: checkpoint saved to "
              f"{run.ckpt_path}; continue with --resume", file=sys.stderr)
        return 128 + stop.signal  # the shell's convention for a process a signal stopped
    saver.save_weights()
    if root:
        plot_losses(metrics_path, run.out_dir / "loss.png", wait=True)
    best = run.best_val
    target = "" if run.target_loss is None else f"target val loss {run.target_loss:g} "
    if target:
        target += f"reached at step {reached['step']} after {reached['elapsed_s']:.1f} s; " if reached else "not reached; "
    print(f"done: {run.iter_num} steps, best val loss {best:.4f} ({run.data.bits_per_char(best):.4f} bits/char); "
          f"{target}weights in {run.out_dir / WEIGHTS_NAME}")
    return 0
