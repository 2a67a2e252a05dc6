"""The training and evaluation engine of BIKE.

Modules: ``model`` (BikeModel from a RunConfig), ``optim`` (AdamW groups, warm-up + cosine),
``precision`` (autocast, grad scaler), ``sampler`` (resumable rank-sharded training sampler),
``datasets`` (splits, tuning hold-out, few-shot, loaders), ``train_loop`` (stage tasks, Trainer,
checkpoints, resume), ``eval_loop`` (multi-view scoring, protocol metrics, caches), ``caches`` (score
caches and what is computed from them), ``zero_shot`` (the frame-level path), ``attributes_cache``
(generated attributes), ``checkpoint`` (checkpoint files, RNG states), ``logging`` (log.txt,
metrics.jsonl, progress), ``runner`` (what bike.train and bike.evaluate share). The run directory's
file names and atomic writes are ``bike.rundir``'s.
"""
