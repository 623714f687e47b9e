"""RunConfig and the engine declare the same settings alike: every default of a run is the engine's
(the presets' recipe departs from them in one place, ``config.RECIPE``), and the block options are the
engine's own list."""

from __future__ import annotations

import lmcore
from lmcore.config import BLOCK_OPTIONS, RunConfig

SHAPE = dict(d_model=8, n_head=2, n_layer=1, block_size=4)


def engine_defaults(**settings: object) -> dict[str, object]:
    m = lmcore.Model(vocab_size=5, **SHAPE, **settings)  # type: ignore[arg-type]
    return {**m.config, **m.optimizer_config, "optimizer": m.optimizer}


def test_run_config_defaults_are_the_engines() -> None:
    for optimizer in ("adamw", "muon"):
        ours = RunConfig(**SHAPE, optimizer=optimizer).model_settings(vocab_size=5)
        engine = engine_defaults(optimizer=optimizer)
        assert {k: ours[k] for k in engine} == engine
    seeded = lmcore.Model(vocab_size=5, **SHAPE, seed=RunConfig().seed)
    assert seeded.rng_state == lmcore.Model(vocab_size=5, **SHAPE).rng_state


def test_block_options_are_the_engines() -> None:
    m = lmcore.Model(vocab_size=5, **SHAPE)  # type: ignore[arg-type]
    assert tuple(m.config) == ("vocab_size", *SHAPE, "dropout", *BLOCK_OPTIONS)
