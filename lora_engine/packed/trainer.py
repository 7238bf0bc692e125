"""A pack: K training jobs on one resident frozen base, one packed forward/backward per step.

    pack = Pack(model, tokenizer, data_dir=..., base_model="minilm-l6")
    pack.add(spec_a, out_a, hooks_a); pack.add(spec_b, out_b, hooks_b)
    outcomes = pack.run()          # or pack.step() at a time, adding jobs between steps

What a job keeps of its own, exactly as `recipe.train` would give it alone: its seed (head and
LoRA initial draws, dropout stream), data order (its sampler), optimizer (AdamW with the recipe's
groups), learning-rate schedule and warm-up, gradient accumulation and clipping, checkpoints
(the recipe's own format: a packed checkpoint resumes alone and a solo one into a pack), stop
requests (obeyed between micro-batches too), progress events and phases, evaluation and adapter
folder. The recipe's pieces (`resolve_spec`, `prepare_run`, `begin_step`, `end_step`, `end_run`)
are called on a *view* of the shared model that shows one job's adapters and heads at their usual
places (`_view`), so none of that logic is repeated here.

A micro-batch round takes one micro-batch of every job in the pack; a job takes its optimizer step
after its own `grad_accum` rounds. Jobs leave when they finish, stop or fail; the others go on
untouched (their state never mixes), and new jobs may join between rounds. Each job is charged
the round's time in proportion to its tokens, plus its own optimizer step and evaluation.

Compatible jobs: those the packability rule admits (packing.py: a packable method, a packed
forward for the base and task, no evaluation during training, no `init_from`), on this pack's base
model and forward, with LoRA on linear layers only (embedding targets train alone) and one
classifier pooling per pack ([CLS] jobs run the last layer for first tokens only, mean-pooled jobs
for every token, so mixing them would change a job's dropout draws from its solo run's).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lora_engine.checkpoint import capture_rng_state, restore_rng_state
from lora_engine.device import DeviceInfo, PeakMemory, autocast, pick_device
from lora_engine.errors import LoraConfigError, TrainingStopped
from lora_engine.forward.encoder import set_pooling
from lora_engine.inject import HEAD_NAMES, head_module_names, lora_modules, set_module
from lora_engine.layers import LoRALinear
from lora_engine.packed.forward import PackedBatch, family, packed_losses
from lora_engine.packed.layer import MultiLoRALinear
from lora_engine.packed.memory import Probe, measure_activations
from lora_engine.packed.routing import JobStream, RoutedDropout, Routing
from lora_engine.packing import pack_family, refusal
from lora_engine.recipe import (
    Pace,
    Run,
    TrainHooks,
    TrainResult,
    abandon_step,
    begin_step,
    clip_gradients,
    end_run,
    end_step,
    prepare_run,
    resolve_spec,
    resume_run,
    save_run_checkpoint,
    training_batches,
    training_data,
    training_inputs,
)
from lora_engine.spec import TrainingSpec


@dataclass(frozen=True)
class Outcome:
    """How a job left the pack: 'succeeded' (result set), 'stopped' (checkpointed) or 'failed'."""

    key: str
    status: str
    step: int
    result: TrainResult | None = None
    error: BaseException | None = None
    packed_with: frozenset[str] = frozenset()  # keys of the jobs it shared rounds with
    device_s: float = 0.0  # its share of the rounds (by tokens), its optimizer steps, evaluation
    examples: int = 0
    tokens: int = 0


@dataclass
class PackedJob:
    key: str
    slot: str  # its name inside the shared model's module dicts
    run: Run
    hooks: TrainHooks
    output_dir: Path
    stream: JobStream
    heads: dict[str, nn.Module]
    adapters: dict[str, LoRALinear]
    params: list[nn.Parameter]
    batches: Iterator
    wall0: float
    micro: int = 0
    step_loss: float = 0.0
    start: tuple | None = None
    pace: Pace = field(default_factory=Pace)
    packed_with: set[str] = field(default_factory=set)  # keys of every job it shared a step with


def _layers_container(model: nn.Module) -> nn.Module:
    if family(model) == "encoder":
        return getattr(model, model.base_model_prefix).encoder
    return model.model.layers


class Pack:
    def __init__(self, model: nn.Module, tokenizer, *, data_dir: str | Path, base_model: str,
                 device: DeviceInfo | None = None, max_jobs: int = 8, max_tokens: int | None = None,
                 decode=None, meteor: bool = True, fused: bool | None = None):
        self.family = family(model)
        self.arch = getattr(model.config, "model_type", None)
        self.model, self.tokenizer = model, tokenizer
        self.base_model, self.data_dir = base_model, data_dir
        self.device = device or pick_device()
        # max_tokens bounds a round's tokens: Σ batch_size × max_length of the jobs in the pack.
        self.max_jobs, self.max_tokens, self.decode, self.meteor = max_jobs, max_tokens, decode, meteor
        # Fused routing (fewer, larger operations per layer; see routing.py) where launches are
        # the cost, on CUDA; on the CPU the per-job operations do less work and are exact.
        self.routing = Routing(fused=self.device.is_cuda if fused is None else fused)
        self.jobs: dict[str, PackedJob] = {}
        self.multi: dict[str, MultiLoRALinear] = {}
        self.real_tokens = 0  # tokens through the shared token-wise ops (all real: no padding)
        self.attention_slots = 0  # padded (row × width) positions of the per-job attention layouts
        self._slots = 0
        self.probe: Probe | None = None  # the last measured round (step(measure=True))
        model.to(self.device.device)
        model.requires_grad_(False)
        heads = head_module_names(model) if self.family == "encoder" else []
        self._original_heads = {h: model.get_submodule(h) for h in heads}
        self._pristine_heads = {h: copy.deepcopy(m) for h, m in self._original_heads.items()}
        # The body's dropouts draw per job within a packed step (and plainly outside one).
        container = _layers_container(model)
        self._dropouts = [(n, m) for n, m in container.named_modules() if isinstance(m, nn.Dropout)]
        for name, module in self._dropouts:
            set_module(container, name, RoutedDropout(module.p, self.routing))
        self.mem = PeakMemory(self.device)
        self.mem.start()

    # -- the shared model seen as one job's model ----------------------------------------------
    @contextmanager
    def _view(self, job: PackedJob | None, heads: dict[str, nn.Module] | None = None):
        """The model as a solo run of `job` sees it (its adapters and heads in place; `job` None:
        the bare base with `heads`); the packed layout is put back afterwards."""
        for name, multi in self.multi.items():
            adapter = job.adapters.get(name) if job is not None else None
            set_module(self.model, name, adapter if adapter is not None else multi.base)
        for name, module in (job.heads if job is not None else heads or {}).items():
            set_module(self.model, name, module)
        if job is not None and self.family == "encoder":
            set_pooling(self.model, job.run.spec.pooling)
        try:
            yield self.model
        finally:
            for name, multi in self.multi.items():
                set_module(self.model, name, multi)
            for name, module in self._original_heads.items():
                set_module(self.model, name, module)

    def _fresh_heads(self, spec: TrainingSpec, label_names: tuple[str, ...]) -> dict[str, nn.Module]:
        """New head modules for a job: the pretrained pooler copied, the output layer sized anew."""
        outputs = len(label_names) if spec.info.kind == "classification" else 1
        fresh = {}
        for name, pristine in self._pristine_heads.items():
            module = copy.deepcopy(pristine)
            if name in HEAD_NAMES:
                if isinstance(module, nn.Linear):
                    module = _resized(module, outputs)
                else:
                    module.out_proj = _resized(module.out_proj, outputs)
            fresh[name] = module
        return fresh

    # -- joining and leaving --------------------------------------------------------------------
    @property
    def planned_tokens(self) -> int:
        """The most tokens the jobs in the pack put into one round (what max_tokens bounds)."""
        return sum(round_tokens(j.run.spec) for j in self.jobs.values())

    @property
    def pooling(self) -> str | None:
        """What the classifiers of this pack's jobs read (one for all); None: no encoder job yet."""
        job = next(iter(self.jobs.values()), None)
        return job.run.spec.pooling if job is not None and self.family == "encoder" else None

    def check(self, spec: TrainingSpec) -> None:
        """Raise LoraConfigError unless `spec` (validated, resolved) can join this pack."""
        if len(self.jobs) >= self.max_jobs:
            raise LoraConfigError(f"the pack is full ({self.max_jobs} jobs)")
        # The first job always fits: alone it would take the same memory.
        if self.max_tokens is not None and self.jobs:
            planned = self.planned_tokens + round_tokens(spec)
            if planned > self.max_tokens:
                raise LoraConfigError(
                    f"the pack's token budget is {self.max_tokens} per round; with this job "
                    f"(batch_size × max_length = {round_tokens(spec)}) it would be {planned}")
        if spec.base_model != self.base_model:
            raise LoraConfigError(f"job base model {spec.base_model!r} is not this pack's "
                                  f"{self.base_model!r}")
        kind = spec.info.kind
        if pack_family(self.arch, kind) != self.family:
            raise LoraConfigError(f"a {kind} job cannot join a pack of {self.family} "
                                  f"{self.base_model!r} jobs")
        pooling = self.pooling
        if pooling is not None and spec.pooling != pooling:
            # One packed pass runs the last layer for first tokens ([CLS]) or for every token (mean).
            raise LoraConfigError(f"a {spec.pooling}-pooled job cannot join a pack of {pooling}-pooled "
                                  "jobs: it trains in another pack or alone")
        why = refusal(method=spec.method, arch=self.arch, kind=kind, evaluates=bool(spec.eval_every),
                      continues_adapter=spec.init_from is not None, recomputes=spec.gradient_checkpointing,
                      devices=spec.devices, quantize=spec.quantize)
        if why is not None:
            raise LoraConfigError(why)

    def add(self, spec: TrainingSpec | dict, output_dir: str | Path, hooks: TrainHooks | None = None, *,
            key: str | None = None) -> str:
        """Set a job up exactly as `recipe.setup` would alone (resuming from `hooks.checkpoint_dir`
        when it holds a checkpoint) and put it in the pack; returns its key."""
        wall0 = time.perf_counter()
        spec = resolve_spec(spec, data_dir=self.data_dir)
        self.check(spec)
        hooks = hooks or TrainHooks()
        slot = f"job{self._slots}"
        key = key or slot
        if key in self.jobs:
            raise ValueError(f"job {key!r} is already in the pack")
        examples, label_names = training_inputs(spec, data_dir=self.data_dir)
        outside = capture_rng_state()  # a job's seeding must not move anyone else's RNG
        plain, adapters = {}, {}
        try:
            with self._view(None, self._fresh_heads(spec, label_names)) as model:
                plain = dict(model.named_modules())
                data = training_data(spec, examples, self.tokenizer)
                run = prepare_run(spec, model, self.tokenizer, data=data, label_names=label_names,
                                  device=self.device)
                adapters = dict(lora_modules(model))
                bad = [n for n, m in adapters.items() if not isinstance(m, LoRALinear) or m.fan_in_fan_out]
                if bad:
                    raise LoraConfigError(f"packed training routes LoRA on linear layers only; {bad[0]!r} "
                                          "is not one: train this job alone")
                heads = {h: model.get_submodule(h) for h in run.heads}
                resume = resume_run(run, hooks.checkpoint_dir)
                stream = JobStream()
        except BaseException:
            for name in adapters:  # a job that cannot join leaves no layer of its own behind
                if name not in self.multi:
                    set_module(self.model, name, plain[name])
            raise
        finally:
            restore_rng_state(outside)
        for name, adapter in adapters.items():
            if name not in self.multi:
                self.multi[name] = MultiLoRALinear(plain[name], self.routing)
                set_module(self.model, name, self.multi[name])
            self.multi[name].add(slot, adapter)
        self._slots += 1
        if resume is not None and hooks.on_resume is not None:
            hooks.on_resume(run.step, resume)
        self.jobs[key] = PackedJob(key=key, slot=slot, run=run, hooks=hooks, output_dir=Path(output_dir),
                                   stream=stream, heads=heads, adapters=adapters,
                                   params=list(run.trainable.values()), batches=training_batches(run),
                                   wall0=wall0)
        return key

    def _leave(self, job: PackedJob) -> None:
        for multi in self.multi.values():
            multi.remove(job.slot)
        del self.jobs[job.key]

    def cancel(self, key: str) -> Outcome:
        """Take a job out now, between steps: its partial step dropped, its state checkpointed."""
        job = self.jobs[key]
        outcome = self._stop(job)
        self._leave(job)
        return outcome

    # -- one micro-batch round -----------------------------------------------------------------
    def step(self, *, measure: bool = False) -> list[Outcome]:
        """One packed micro-batch round; returns the outcomes of the jobs that left the pack.
        `measure`: count the round's activation memory into `self.probe` (see memory.py)."""
        jobs = list(self.jobs.values())
        if not jobs:
            return []
        t0 = time.perf_counter()
        self.model.train()
        for job in jobs:
            if job.micro == 0:
                with job.stream.active():  # the step's start holds the job's own random stream
                    job.start = begin_step(job.run)
                job.step_loss = 0.0
            job.packed_with.update(j.key for j in jobs if j is not job)
        batches = [next(job.batches) for job in jobs]
        packed = [PackedBatch(job.slot, {k: v.to(self.device.device, non_blocking=True)
                                         for k, v in batch.inputs.items()},
                              job.run.info.kind, job.heads, job.stream, job.run.spec.pooling)
                  for job, batch in zip(jobs, batches, strict=True)]
        with measure_activations(self.model) if measure else nullcontext() as saved:
            with autocast(self.device):
                raw = packed_losses(self.model, packed, self.routing)
            losses = [loss / job.run.spec.grad_accum for loss, job in zip(raw, jobs, strict=True)]
            total = torch.stack(losses).sum()
        tokens = sum(b.tokens for b in batches)
        if saved is not None:
            self.probe = Probe(saved.total, tokens)
        total.backward()
        # Jobs whose optimizer step ends with this round clip their own gradient now, so the
        # losses and their gradient norms come back in one device sync, not one per job.
        ending = [job for job in jobs if job.micro + 1 >= job.run.spec.grad_accum]
        norms = [clip_gradients(job.params).float() for job in ending]
        values = torch.stack([loss.detach().float() for loss in losses] + norms).tolist()
        norm_of = {job.key: norm for job, norm in zip(ending, values[len(jobs):], strict=True)}
        spent = time.perf_counter() - t0
        self.real_tokens += tokens
        self.attention_slots += sum(b.inputs["attention_mask"].numel() for b in batches)
        out = []
        for job, batch, value in zip(jobs, batches, values[:len(jobs)], strict=True):
            job.pace.count(job.run, batch)
            job.run.device_s += spent * batch.tokens / max(tokens, 1)
            job.step_loss += value
            job.micro += 1
            try:
                outcome = self._after_micro(job, norm_of.get(job.key))
            except BaseException as exc:  # one job's hook or output failing fails that job only
                outcome = _outcome(job, "failed", error=exc)
            if outcome is not None:
                self._leave(job)
                out.append(outcome)
        return out

    def _after_micro(self, job: PackedJob, grad_norm: float | None) -> Outcome | None:
        """After a micro-batch of `job`; `grad_norm`: its clipped gradient's norm when its step ends."""
        run, hooks = job.run, job.hooks
        if job.micro < run.spec.grad_accum:
            if hooks.should_stop is not None and hooks.should_stop():
                return self._stop(job)
            return None
        job.micro = 0
        try:  # the recipe's own step end, drawing (checkpoints record it) from the job's stream
            with job.stream.active():
                end_step(run, hooks, job.step_loss, grad_norm, job.pace, since=time.perf_counter())
        except TrainingStopped:
            return _outcome(job, "stopped")
        if run.step >= run.total_steps:
            return self._finish(job)
        return None

    def _stop(self, job: PackedJob) -> Outcome:
        """Drop the job's partial step (as the recipe does), checkpoint the state before it."""
        if job.micro:
            try:
                with job.stream.active():
                    abandon_step(job.run, job.start, job.hooks)
            except TrainingStopped:
                pass
        elif job.hooks.checkpoint_dir is not None:
            with job.stream.active():
                saved = save_run_checkpoint(job.run, job.hooks.checkpoint_dir)
            if job.hooks.on_checkpoint is not None:
                job.hooks.on_checkpoint(job.run.step, saved)
        job.micro = 0
        return _outcome(job, "stopped")

    def _finish(self, job: PackedJob) -> Outcome:
        """The recipe's run end (evaluation, adapter folder), on the job's solo view of the model."""
        with self._view(job), job.stream.active():
            result = end_run(job.run, job.hooks, job.output_dir, data_dir=self.data_dir, mem=self.mem,
                             wall0=job.wall0, decode=self.decode, meteor=self.meteor)
        return _outcome(job, "succeeded", result=result)

    # -- driving -------------------------------------------------------------------------------
    def run(self) -> dict[str, Outcome]:
        """Rounds until every job has left; the outcome of each."""
        outcomes: dict[str, Outcome] = {}
        while self.jobs:
            for outcome in self.step():
                outcomes[outcome.key] = outcome
        return outcomes

    @property
    def real_token_share(self) -> float:
        """Real tokens over the padded slots of the jobs' attention layouts (token-wise work: 100 %)."""
        return self.real_tokens / max(self.attention_slots, 1)

    def close(self) -> nn.Module:
        """Put the base model back as it came (no adapters, its own heads and dropouts)."""
        for job in list(self.jobs.values()):
            self._leave(job)
        for name, multi in self.multi.items():
            set_module(self.model, name, multi.base)
        container = _layers_container(self.model)
        for name, module in self._dropouts:
            set_module(container, name, module)
        self.multi = {}
        return self.model


def _outcome(job: PackedJob, status: str, **kw) -> Outcome:
    run = job.run
    return Outcome(job.key, status, run.step, packed_with=frozenset(job.packed_with), device_s=run.device_s,
                   examples=run.examples, tokens=run.tokens, **kw)


def round_tokens(spec: TrainingSpec) -> int:
    """The most tokens a job puts into one micro-batch round."""
    return spec.batch_size * spec.max_length


def _resized(linear: nn.Linear, outputs: int) -> nn.Linear:
    return nn.Linear(linear.in_features, outputs, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
