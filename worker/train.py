"""The `train` executor: one fine-tuning run through `lora_engine.recipe.train`, or across its
spec's `devices` through `lora_engine.multidevice` (data parallel ranks this process starts)."""

from __future__ import annotations

from orchestrator.services.leases import UsageRecord
from orchestrator.services.metrics import Point
from worker import exporter
from worker.executor import JobContext, JobResult, StagedAdapter


def run_training(ctx: JobContext) -> JobResult:
    """Train the job's spec into `ctx.staging_dir`, resuming from the job's last checkpoint."""
    from lora_engine.recipe import train
    from lora_engine.spec import TrainingSpec

    spec = TrainingSpec.model_validate(ctx.spec)
    if spec.devices > 1:  # its own ranks, started and ended here; this process keeps the hooks
        from lora_engine.multidevice import train_on_devices

        result = train_on_devices(spec, ctx.staging_dir, data_dir=ctx.settings.data_dir, devices=spec.devices,
                                  hooks=train_hooks(ctx), timeout_s=ctx.settings.rank_timeout_s)
    else:
        result = train(spec, ctx.staging_dir, data_dir=ctx.settings.data_dir, hooks=train_hooks(ctx),
                       cache=ctx.cache)
    stats = result.stats
    adapter = StagedAdapter(result.adapter_dir, int(stats.trainable_params), int(stats.total_params))
    # Every evaluation of the run once more, those before a resume included (the checkpoint
    # carried them; points already written are replaced by the same values).
    points = [Point(name, p.step, p.epoch, value) for p in result.eval_history
              for name, value in holdout_series(p).items()]
    return JobResult(metrics=result.metrics, usage=UsageRecord.of_run(stats, spec.devices), adapter=adapter,
                     points=points)


def train_hooks(ctx: JobContext):
    """The recipe's hooks for a training job, alone or in a pack: progress (the Prometheus gauges,
    the curve points, the heartbeat), phases, checkpoints and resumes, the divergence guard."""
    from lora_engine.recipe import TrainHooks

    def on_progress(p) -> None:
        exporter.observe_progress(p.step, p.examples_per_s)
        if ctx.hooks.on_metrics is not None:  # before the heartbeat, which flushes the points
            ctx.hooks.on_metrics(p.step, p.epoch, {"loss": p.loss, "lr": p.lr, "grad_norm": p.grad_norm})
        ctx.hooks.on_progress(p.step, p.total, p.loss, p.grad_norm)

    def on_evaluate(point) -> None:  # an evaluation during training: its curves, at the next beat
        if ctx.hooks.on_metrics is not None:
            ctx.hooks.on_metrics(point.step, point.epoch, holdout_series(point))

    return TrainHooks(
        on_progress=on_progress,
        should_stop=ctx.hooks.should_stop,
        checkpoint_every=ctx.settings.checkpoint_every,
        checkpoint_dir=ctx.checkpoint_dir,
        on_checkpoint=ctx.hooks.on_checkpoint,
        on_resume=ctx.hooks.on_resume,
        on_evaluate=on_evaluate,
        on_phase=ctx.hooks.on_phase,
        divergence_factor=ctx.settings.divergence_factor,
        divergence_patience=ctx.settings.divergence_patience,
    )


def holdout_series(point) -> dict[str, float]:
    """An evaluation during training (held-out training rows) as `holdout/<metric>` curve values."""
    return {f"holdout/{name}": value for name, value in point.metrics.items()}
