"""The training loop: one loop for every task (:mod:`tokendyn.train.task`), on one device or
several processes (torchrun + DistributedDataParallel).

Per optimiser step s: the learning rate of :func:`lr_at`; for each of the ``accumulation``
micro-batches of this process, the task's slice of step s's global batch, forward (bf16
autocast on CUDA), loss / accumulation, backward (gradients all-reduced by DDP on the
last micro-batch only); gradient clipping; AdamW. Every ``eval_every`` steps the validation
metrics, every ``checkpoint_every`` steps a checkpoint (:mod:`tokendyn.train.state`), and
the callbacks (the regime monitor) at their own interval; at the end the test metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import ConfigError, DataError, Interrupted, TokendynError, TrainingDivergedError
from ..outputs import WRITE_ERRNOS, write_file
from ..resources import check_memory, resolve_device
from . import state as runstate
from .task import Task

# "matrices": mamba_ssm's rule (matrices, no biases, norms, A_log or D) with the S_B/S_C
# parametrisation of a sign constraint decayed whole, as x_proj is; "all": every parameter (the
# authors' language models, weight decay 0.25)
DECAY_RULES = ("matrices", "all")


MAX_STEPS = 10**9        # far beyond any run (a billion optimiser steps), and refuses a typo at once


@dataclass
class TrainConfig:
    """Optimiser and schedule settings.

    steps: optimiser steps; micro_batch: examples per forward pass in each process
    (0: the whole per-process share of the global batch, no accumulation); lr: peak
    learning rate; warmup: fraction of the steps with a linear warm-up; min_lr_ratio:
    the cosine decays to lr·min_lr_ratio at the last step; weight_decay: AdamW's, on the
    parameters ``decay_rule`` picks (:func:`param_groups`); grad_clip: max global gradient norm (0: off);
    eval_every / checkpoint_every / log_every: intervals in steps (0: only at the end);
    autocast: bf16 autocast on CUDA; eval_test: evaluate the test split at every evaluation too
    (``test_curve`` records), so that the test metric at the best validation step can be read
    afterwards (early stopping), at the cost of a second evaluation; cuda_graph: run each
    optimiser step as CUDA graphs (:class:`GraphedStep`; one CUDA process only).
    """

    steps: int = 200
    micro_batch: int = 0
    lr: float = 1.5e-3
    warmup: float = 0.01
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    decay_rule: str = "matrices"
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 50
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    autocast: bool = True
    eval_test: bool = False
    cuda_graph: bool = False

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}.")
        if self.steps > MAX_STEPS:
            raise ConfigError(f"steps {self.steps:,} is above the largest tokendyn accepts ({MAX_STEPS:,}).")
        for name in ("lr", "warmup", "min_lr_ratio", "weight_decay", "grad_clip"):
            if not isinstance(getattr(self, name), (int, float)) or not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)!r}.")
        if self.lr <= 0 or not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"need lr > 0, 0 <= warmup < 1 and 0 <= min_lr_ratio <= 1, got lr={self.lr}, "
                              f"warmup={self.warmup}, min_lr_ratio={self.min_lr_ratio}.")
        for name in ("micro_batch", "eval_every", "checkpoint_every", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}.")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("weight_decay and grad_clip must be >= 0.")
        if self.decay_rule not in DECAY_RULES:
            raise ConfigError(f"decay_rule must be one of {', '.join(DECAY_RULES)}, got {self.decay_rule!r}.")
        if not isinstance(self.cuda_graph, bool):
            raise ConfigError(f"cuda_graph must be true or false, got {self.cuda_graph!r}.")
        self.betas = tuple(self.betas)

    def identity(self) -> dict:
        """The fields that decide the run's numbers (all of them; eval_test and cuda_graph only
        where on, so that runs recorded before they existed still resume; a graphed step's AdamW
        keeps its step count on the device, which moves the last digits)."""
        fields = asdict(self)
        for name in ("eval_test", "cuda_graph"):
            if not fields[name]:
                del fields[name]
        return fields


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ceil(warmup·steps) steps, then cosine from lr to lr·min_lr_ratio."""
    warm = math.ceil(cfg.warmup * cfg.steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(cfg.steps - 1 - warm, 1)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: torch.nn.Module, weight_decay: float, rule: str = "matrices") -> list[dict]:
    """AdamW groups. rule "matrices": weight decay on matrices and on parameters marked
    ``_weight_decay`` (a sign constraint's U and θ, which build S_B and S_C as x_proj's matrix
    does), none on biases, norm weights, and parameters marked ``_no_weight_decay`` (the mixer's
    A_log and D), as in mamba_ssm. rule "all": every parameter."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        decayed = rule == "all" or getattr(p, "_weight_decay", False) or (
            p.ndim >= 2 and not getattr(p, "_no_weight_decay", False))
        (decay if decayed else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class Distributed:
    """This process's place: rank, world size, and whether a process group is up."""

    rank: int = 0
    world: int = 1
    active: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 under it (the process that writes and reports)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size(), active=True)


def training_device(device: str | torch.device) -> torch.device:
    """The device a training process uses: the name resolved by the one device resolver,
    :func:`tokendyn.resources.resolve_device` ('auto' -> cuda when available); under torchrun each
    process takes cuda:LOCAL_RANK."""
    device = torch.device(resolve_device(str(device)))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# bytes per parameter while training in float32 with AdamW: weights, gradients, two moments
TRAINING_BYTES_PER_PARAMETER = 16


def model_identity(config) -> dict:
    """The config fields that define the model, the mixer's options flat (the scan backend is the
    machine's choice): what a run directory records and a resumed run must match."""
    return {k: v for k, v in config.flat_dict().items() if k != "scan_backend"}


def count_parameters(model_class, config) -> int:
    """Parameters of ``model_class(config)``, counted on the meta device (no memory). Layers are
    alike, so a deep model is counted from builds of one and two layers: a config of thousands
    of layers is answered at once."""
    def count(cfg) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in model_class(cfg).parameters())

    if config.n_layer <= 4:
        return count(config)
    try:
        one, two = (count(dataclasses.replace(config, n_layer=n)) for n in (1, 2))
    except (TokendynError, TypeError, ValueError):    # a setting tied to the depth (e.g. reorder_layers)
        return count(config)
    return one + (config.n_layer - 1) * (two - one)


def check_model_fits(model_class, config, device) -> int:
    """Refuse a model whose weights, gradients and AdamW moments alone exceed the memory free on
    ``device`` (a lower bound of what training needs), before any weight is allocated. Returns
    the parameter count; raises ConfigError."""
    n = count_parameters(model_class, config)
    check_memory(TRAINING_BYTES_PER_PARAMETER * n, str(training_device(device)),
                 f"a model of {n:,} parameters (d_model {config.d_model}, {config.n_layer} layers)")
    return n


def check_batch_fits(config, tokens_per_pass: int, bytes_per_token: int, device, what: str) -> None:
    """Refuse a forward and backward pass whose activations alone exceed the memory free, before
    any is made: a lower bound of what autograd keeps, float32, per token and layer (the block's
    input, its norm and the mixer's in_proj output: 8 · d_model) and ``bytes_per_token`` besides
    (a language model's logits and their gradient). what: the options that ask for it."""
    per_token = 4 * 8 * config.d_model * config.n_layer + bytes_per_token
    check_memory(float(tokens_per_pass) * per_token, str(training_device(device)), what)


# FLOP/s far above what any device reaches in training (a CPU: well under 1e12 in practice; one
# H100: about 1e15 in dense bf16), so that the time floor below is a true lower bound
PEAK_FLOPS = {"cpu": 1e13, "cuda": 4e15}
MAX_RUN_S = 365 * 86400       # a run that cannot finish within a year even at that rate is a typo


def check_duration(n_params: int, tokens: float, device, what: str) -> None:
    """Refuse a run whose ``tokens`` (all steps together) could not be trained within a year even
    at PEAK_FLOPS: 6 FLOP per parameter and token (forward and backward), before anything is
    allocated. what: the options that ask for it."""
    dev = training_device(device)
    rate = PEAK_FLOPS["cuda" if dev.type == "cuda" else "cpu"]
    floor_s = 6.0 * n_params * float(tokens) / rate
    if floor_s > MAX_RUN_S:
        years = floor_s / MAX_RUN_S
        took = f"{years:,.0f} years" if years >= 2 else f"{floor_s / 86400:,.0f} days"
        raise ConfigError(f"{what} would take at least {took} on {dev} ({tokens:,.0f} "
                          f"tokens through {n_params:,} parameters at 6 FLOP each and {rate:.0e} FLOP/s, far "
                          "above what it reaches).")


def per_pass(batch_size: int, micro_batch: int) -> int:
    """Examples in one forward pass of one process (torchrun splits the global batch)."""
    return micro_batch or max(1, batch_size // max(1, int(os.environ.get("WORLD_SIZE", "1"))))


class MetricsLog:
    """Appends JSON records to OUT/metrics.jsonl (main process only; kept in memory too)."""

    def __init__(self, out: Path | None, enabled: bool):
        self.path = Path(out) / runstate.METRICS if out is not None else None
        self.enabled = enabled
        self.records: list[dict] = []

    def __call__(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


@dataclass
class TrainResult:
    """What a run ended with (also OUT/result.json): final train loss, validation and test
    metrics, the validation curve [(step, value of the task's metric)], tokens seen,
    wall time, and the time spent in callbacks (the monitor's cost)."""

    steps: int
    final_loss: float
    validation: dict
    test: dict
    val_curve: list
    tokens_seen: int
    wall_s: float
    train_s: float
    callback_s: float
    stopped_early: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, leave=False)


def train(model: torch.nn.Module, task: Task, cfg: TrainConfig, out: Path | None = None, *,
          identity: dict | None = None, resume: bool = False, device="auto", callbacks=(),
          stop_after_steps: int | None = None, progress: bool = True, tokenizer_json: str | None = None,
          log=None) -> TrainResult:
    """Train ``model`` on ``task`` (module docstring); returns the :class:`TrainResult`.

    A run that fails or is interrupted leaves its directory ready for the next command
    (:func:`_after_failure`): the last checkpoint stays, and the error or interruption says that
    ``--resume`` continues from it; a new run that has no checkpoint yet, or that diverged, is
    removed, so that the same command can be run again into the same directory.

    out: the run directory (None: nothing written, no checkpoints); identity: what
    run.json records (the loop adds its own settings and the task's description);
    resume: continue from OUT's latest checkpoint (the identity must match);
    callbacks: objects with ``every`` and ``__call__(step, model, record)``, called on the
    main process at step 0, every ``every`` steps and at the end; stop_after_steps: stop
    (after writing a checkpoint) once that many steps are done, as if killed;
    tokenizer_json: saved beside each checkpoint's model; log: print function for lines.
    """
    started: list[bool] = []            # set once this call has written the run directory
    created = out is not None and not Path(out).exists()
    try:
        return _train(model, task, cfg, out, identity=identity, resume=resume, device=device,
                      callbacks=callbacks, stop_after_steps=stop_after_steps, progress=progress,
                      tokenizer_json=tokenizer_json, log=log, started=started)
    except BaseException as exc:
        if out is None or not started or not is_main_process():
            raise
        replacement = _after_failure(Path(out), exc, resume, created)
        if replacement is None:
            raise
        raise replacement from exc


def _after_failure(out: Path, exc: BaseException, resume: bool, created: bool) -> BaseException | None:
    """Tidy the run directory after ``exc`` ended a run, and the exception that tells the user
    what remains (None: ``exc`` as it is)."""
    import shutil

    shutil.rmtree(out / runstate.TMP, ignore_errors=True)
    step = runstate.last_checkpoint_step(out)
    diverged = isinstance(exc, TrainingDivergedError)
    if not resume and (step is None or diverged):
        runstate.remove_run(out, created)
        step = None
    if isinstance(exc, KeyboardInterrupt):
        if step is None and resume:
            return Interrupted(f"before the run's first checkpoint; --resume {out} starts it from step 0 again.")
        if step is None:
            return Interrupted("before the run's first checkpoint; nothing of it was kept.")
        return Interrupted(f"the checkpoint of step {step} in {out / runstate.CHECKPOINT} remains and --resume {out} "
                           "continues the run.")
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        exc = DataError(f"cannot write {exc.filename or out}: {exc.strerror}.")
    if not isinstance(exc, TokendynError):
        return None
    message = str(exc).rstrip(".")
    if step is not None:
        return type(exc)(f"{message}; the checkpoint of step {step} remains and --resume {out} continues the run.")
    return type(exc)(f"{message} (nothing of the run in {out} was kept).")


@dataclass
class _Progress:
    """Where a run stands: the next step, the tokens seen, and the seconds of earlier sessions
    (wall, optimiser steps, callbacks) plus this one's, so that a resumed run's totals go on."""

    step: int = 0
    tokens_seen: int = 0
    prior_wall: float = 0.0
    train_s: float = 0.0
    callback_s: float = 0.0
    t_start: float = dataclasses.field(default_factory=time.perf_counter)

    def wall(self) -> float:
        return self.prior_wall + time.perf_counter() - self.t_start

    def trainer_state(self, step: int) -> dict:
        return {"step": step, "tokens_seen": self.tokens_seen, "wall_s": self.wall(), "train_s": self.train_s,
                "callback_s": self.callback_s}


def _accumulation(task: Task, cfg: TrainConfig, world: int) -> int:
    """Micro-batches per optimiser step in each process; ConfigError where the batch does not split."""
    per_process, rem = divmod(task.examples_per_step, world)
    if rem:
        raise ConfigError(f"the global batch of {task.examples_per_step} examples does not split over "
                          f"{world} processes.")
    micro = cfg.micro_batch or per_process
    if micro > per_process or per_process % micro:
        raise ConfigError(f"the micro-batch {micro} must divide the per-process batch of {per_process} examples.")
    return per_process // micro


def _restore(model, optimizer, out: Path | None, resume: bool, main: bool, log) -> _Progress:
    """The run's progress: from its last checkpoint when resuming (model and optimiser loaded,
    metrics cut back to it), else from step 0 (metrics emptied)."""
    if resume and out is not None:
        ckpt = runstate.latest_checkpoint(Path(out))
        if ckpt is not None:
            trainer = runstate.load_checkpoint(ckpt, model, optimizer)
            progress = _Progress(int(trainer["step"]), int(trainer["tokens_seen"]), trainer["wall_s"],
                                 trainer["train_s"], trainer["callback_s"])
            if main:
                runstate.truncate_metrics(Path(out), progress.step)
                log(f"resumed from {ckpt} at step {progress.step}")
            return progress
        if main:
            runstate.truncate_metrics(Path(out), -1)
            log(f"{out} holds no checkpoint yet; the run starts from step 0")
    elif out is not None and main:
        runstate.truncate_metrics(Path(out), -1)
    return _Progress()


def _set_lr(optimizer, step: int, cfg: TrainConfig) -> float:
    """The learning rate of ``step`` into every group (in place where it is a device tensor, as a
    graphed step reads it); returns it."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    return lr


def _micro_batch(task: Task, step: int, i: int, accumulation: int, ddp, device) -> tuple[torch.Tensor, ...]:
    """Micro-batch ``i`` of ``step`` on ``device``; on CUDA copied from pinned memory, so that the
    copy does not wait for the GPU to drain."""
    batch = task.train_batch(step, ddp.rank * accumulation + i, ddp.world * accumulation)
    if device.type == "cuda":
        batch = tuple(t.pin_memory() if t.device.type == "cpu" else t for t in batch)
    return tuple(t.to(device, non_blocking=True) for t in batch)


def _optimiser_step(net, model, optimizer, task: Task, cfg: TrainConfig, step: int, accumulation: int, ddp,
                    device) -> tuple[torch.Tensor, float]:
    """One optimiser step over ``accumulation`` micro-batches: (the step's mean loss over the
    processes, as a device scalar, and its learning rate)."""
    lr = _set_lr(optimizer, step, cfg)
    step_loss = torch.zeros((), device=device)
    for i in range(accumulation):
        batch = _micro_batch(task, step, i, accumulation, ddp, device)
        sync = not ddp.active or i == accumulation - 1
        with net.no_sync() if not sync else _null():
            loss = task.loss(net, batch) / accumulation
            loss.backward()
        step_loss += loss.detach()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ddp.active:
        dist.all_reduce(step_loss, op=dist.ReduceOp.SUM)
        step_loss /= ddp.world
    return step_loss, lr


def _with_gradients(model) -> list:
    """The trainable parameters that hold a gradient."""
    return [p for p in model.parameters() if p.requires_grad and p.grad is not None]


GRAPH_WARMUP = 3   # eager steps (each a real one) before the capture: lazy set-up happens outside it


class GraphedStep:
    """An optimiser step as two CUDA graphs (TrainConfig.cuda_graph), captured after
    GRAPH_WARMUP eager steps of the session, which run on a side stream as the capture needs:

    - ``micro``: the loss and backward of one micro-batch read from static input buffers. With
      one micro-batch a step, the backward allocates the gradients inside the capture, as an
      eager backward does, layer by layer into memory the freed activations leave, and each
      replay writes them afresh; with several, they are allocated (zeros) before the capture and
      each replay adds into them;
    - ``update``: gradient clipping, the AdamW step (capturable: step count and learning rate on
      the device) and, with several micro-batches, zeroing the gradients.

    A step copies each micro-batch into the buffers and replays ``micro``, then sets the learning
    rate and replays ``update``: the host launches two graphs a micro-batch instead of every
    kernel, which is what bounds a step when the host is slower than the GPU. Dropout draws new
    numbers at each replay (the graph advances the generator's offset).
    """

    def __init__(self, net, model, optimizer, task: Task, cfg: TrainConfig, batch, accumulation: int):
        self.optimizer, self.accumulation = optimizer, accumulation
        self.inputs = tuple(t.clone() for t in batch)
        torch.cuda.synchronize()
        try:
            if accumulation > 1:
                params = self._used_parameters(net, model, task)
                # gradients kept allocated (zeros), so that each replay of ``micro`` adds into them
                for p in params:
                    p.grad = torch.zeros_like(p)
            else:
                # allocated by the captured backward itself: not alive beside the forward's
                # activations, as eager gradients are not (a whole model's gradients more at
                # the peak otherwise)
                model.zero_grad(set_to_none=True)
            pool = torch.cuda.graph_pool_handle()
            self.micro, self.update = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.micro, pool=pool):
                self.loss = task.loss(net, self.inputs) / accumulation
                self.loss.backward()
            if accumulation == 1:
                # the parameters the loss reaches: the others keep no gradient, and AdamW leaves
                # them alone (no weight decay) as it does in an eager step
                params = _with_gradients(model)
            with torch.cuda.graph(self.update, pool=pool):
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                if accumulation > 1:
                    optimizer.zero_grad(set_to_none=False)
        except RuntimeError as exc:
            raise ConfigError(f"--cuda-graph: the training step could not be captured as a CUDA graph "
                              f"({str(exc).splitlines()[0][:200]}); train without --cuda-graph.") from None

    def _used_parameters(self, net, model, task: Task) -> list:
        """The parameters the loss reaches, found by capturing (not running) one backward into a
        graph that is then dropped: the others keep no gradient, so that AdamW leaves them alone
        (no weight decay) as it does in an eager step."""
        model.zero_grad(set_to_none=True)
        probe = torch.cuda.CUDAGraph()
        with torch.cuda.graph(probe):
            task.loss(net, self.inputs).backward()
        used = _with_gradients(model)
        model.zero_grad(set_to_none=True)
        del probe
        return used

    def step(self, task: Task, cfg: TrainConfig, step: int, ddp, device) -> tuple[torch.Tensor, float]:
        """One optimiser step by replays: (the step's mean loss as a device scalar, its learning rate)."""
        step_loss = torch.zeros((), device=device)
        for i in range(self.accumulation):
            for static, t in zip(self.inputs, _micro_batch(task, step, i, self.accumulation, ddp, device)):
                static.copy_(t, non_blocking=True)
            self.micro.replay()
            step_loss += self.loss.detach()
        lr = _set_lr(self.optimizer, step, cfg)
        self.update.replay()
        return step_loss, lr


class _Stepper:
    """Runs optimiser steps: eagerly, or with cfg.cuda_graph eagerly on a side stream for the
    session's first GRAPH_WARMUP steps (as a capture needs) and then by replaying a
    :class:`GraphedStep` captured at the next one. Call with the step; returns (loss, lr)."""

    def __init__(self, net, model, optimizer, task: Task, cfg: TrainConfig, accumulation: int, ddp, device,
                 start: int):
        self.args = (net, model, optimizer, task, cfg)
        self.accumulation, self.ddp, self.device, self.start = accumulation, ddp, device, start
        self.graphed = None
        self.side = torch.cuda.Stream(device) if cfg.cuda_graph else None

    def __call__(self, step: int) -> tuple[torch.Tensor, float]:
        net, model, optimizer, task, cfg = self.args
        acc, ddp, device = self.accumulation, self.ddp, self.device
        if self.graphed is None and self.side is not None and step - self.start >= GRAPH_WARMUP:
            self.graphed = GraphedStep(net, model, optimizer, task, cfg, _micro_batch(task, step, 0, acc, ddp, device),
                                       acc)
        if self.graphed is not None:
            return self.graphed.step(task, cfg, step, ddp, device)
        if self.side is None:
            return _optimiser_step(net, model, optimizer, task, cfg, step, acc, ddp, device)
        self.side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self.side):
            out = _optimiser_step(net, model, optimizer, task, cfg, step, acc, ddp, device)
        torch.cuda.current_stream(device).wait_stream(self.side)
        return out


def _evaluate(task: Task, model, cfg: TrainConfig, done: int, metrics) -> dict:
    """The validation record of step ``done`` (and with eval_test the test split's, but at the
    last step, whose test record follows the loop); returns the validation metrics."""
    val = task.evaluate(model, "validation")
    metrics({"kind": "validation", "step": done, **val})
    if cfg.eval_test and done != cfg.steps:
        metrics({"kind": "test_curve", "step": done, **task.evaluate(model, "test")})
    return val


def _open_run_dir(out: Path | None, identity: dict, cfg: TrainConfig, resume: bool, ddp, started: list) -> None:
    """Check that the step count's metric records fit in memory, then write (or check, when
    resuming) the run directory's run.json; ``started`` records that this call wrote it."""
    # the records of the metrics log are also kept in memory: a step count in the billions asks
    # for more memory than there is long before it asks for more time than anyone has
    records = cfg.steps // max(cfg.log_every, 1) + cfg.steps // max(cfg.eval_every or cfg.steps, 1)
    check_memory(512 * records, "cpu", f"--steps {cfg.steps:,} (about {records:,} metric records)")
    if out is not None and ddp.main:
        runstate.prepare_run_dir(Path(out), identity, resume)
        started.append(True)
    if ddp.active:
        dist.barrier()


def _prepare_model(model, cfg: TrainConfig, out: Path | None, resume: bool, device, ddp, log):
    """The model on ``device`` in training mode, its AdamW, restored from the last checkpoint when
    resuming: (optimizer, the module to run (DDP-wrapped across processes), the run's progress)."""
    model.to(device)
    model.train()
    # a graphed step's AdamW keeps its step count and learning rate on the device (capturable)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.decay_rule), lr=cfg.lr, betas=cfg.betas,
                                  fused=device.type == "cuda", capturable=cfg.cuda_graph)
    run = _restore(model, optimizer, out, resume, ddp.main, log)
    for group in optimizer.param_groups:      # a checkpoint's groups carry the mode it was saved in
        group["capturable"] = cfg.cuda_graph
        group["lr"] = torch.tensor(float(group["lr"]), device=device) if cfg.cuda_graph else float(group["lr"])
    model.to(device)
    if ddp.active:
        dist.barrier()
    net = model
    if ddp.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run.t_start = time.perf_counter()        # this session's clock starts with its first step
    return optimizer, net, run


def _log_step(metrics, bar, run: _Progress, done: int, step_loss: torch.Tensor, lr: float) -> float:
    """The train record of step ``done`` (its loss read from the device); TrainingDivergedError
    for a loss that is not finite. Returns the loss."""
    loss = float(step_loss)
    if not math.isfinite(loss):
        raise TrainingDivergedError(f"the training loss became {loss} at step {done}; lower the learning rate.")
    metrics({"kind": "train", "step": done, "loss": loss, "lr": lr, "tokens": run.tokens_seen,
             "elapsed_s": round(run.wall(), 3)})
    if bar is not None:
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return loss


def check_cuda_graph(device: torch.device, processes: int = 1) -> None:
    """ConfigError unless graphed steps (TrainConfig.cuda_graph) can run: one CUDA device, one process."""
    if device.type != "cuda" or processes > 1:
        raise ConfigError(f"--cuda-graph needs one CUDA device and one process (no torchrun), not {device} with "
                          f"{processes} process(es); train without it.")


def _devices(device, cfg: TrainConfig) -> tuple[torch.device, Distributed]:
    """The training device (made current) and this process's place among the processes;
    ConfigError for cfg.cuda_graph where it cannot run, before anything is written."""
    device = training_device(device)
    ddp = init_distributed(device)
    if cfg.cuda_graph:
        check_cuda_graph(device, ddp.world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device, ddp


def _train(model: torch.nn.Module, task: Task, cfg: TrainConfig, out: Path | None, *, identity: dict | None,
           resume: bool, device, callbacks, stop_after_steps: int | None, progress: bool,
           tokenizer_json: str | None, log, started: list) -> TrainResult:
    device, ddp = _devices(device, cfg)
    accumulation = _accumulation(task, cfg, ddp.world)
    task.autocast = cfg.autocast
    log = log or (lambda *_: None)
    _open_run_dir(out, {**(identity or {}), "train": cfg.identity(), "task": task.describe()}, cfg, resume, ddp,
                  started)
    optimizer, net, run = _prepare_model(model, cfg, out, resume, device, ddp, log)
    metrics = MetricsLog(out, ddp.main)
    callbacks = list(callbacks)
    start = run.step
    end = cfg.steps if stop_after_steps is None else max(start, min(cfg.steps, stop_after_steps))
    bar = _progress(cfg.steps, start, progress and ddp.main)

    def run_callbacks(step: int, final: bool) -> None:
        t = time.perf_counter()
        if ddp.main:
            for cb in callbacks:
                if final or (cb.every and step % cb.every == 0):
                    cb(step, model, metrics)
        run.callback_s += time.perf_counter() - t

    def checkpoint(step: int) -> None:
        if out is None:
            return
        if ddp.main:
            runstate.save_checkpoint(Path(out), model, optimizer, run.trainer_state(step), tokenizer_json)
        if ddp.active:
            dist.barrier()

    val, last_loss = None, float("nan")
    if start == 0:
        run_callbacks(0, False)
    stepper = _Stepper(net, model, optimizer, task, cfg, accumulation, ddp, device, start)
    for step in range(start, end):
        t0 = time.perf_counter()
        step_loss, lr = stepper(step)
        run.tokens_seen += task.examples_per_step * task.tokens_per_example
        done = step + 1
        is_last = done == end
        if (cfg.log_every and done % cfg.log_every == 0) or is_last:
            last_loss = _log_step(metrics, bar, run, done, step_loss, lr)
        if device.type == "cuda" and is_last:
            torch.cuda.synchronize()
        run.train_s += time.perf_counter() - t0
        if ddp.main and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            val = _evaluate(task, model, cfg, done, metrics)
        run_callbacks(done, done == cfg.steps)
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or is_last:
            checkpoint(done)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return _finish(task, model, cfg, out, run, metrics, val, last_loss, end, ddp)


def _finish(task: Task, model, cfg: TrainConfig, out: Path | None, run: _Progress, metrics, val, last_loss: float,
            end: int, ddp) -> TrainResult:
    """The run's result after its last step (or its stop at ``end``): the test split at the
    last step, the validation curve, and OUT/result.json for a finished run."""
    stopped = end < cfg.steps
    test = {}
    if not stopped and ddp.main:
        if val is None:            # resumed after the last step's checkpoint
            val = task.evaluate(model, "validation")
        test = task.evaluate(model, "test")
        metrics({"kind": "test", "step": cfg.steps, **test})
    records = runstate.read_metrics(Path(out)) if out is not None else metrics.records
    curve = [[r["step"], r[task.metric]] for r in records if r.get("kind") == "validation"]
    if math.isnan(last_loss):
        last_loss = next((r["loss"] for r in reversed(records) if r.get("kind") == "train"), float("nan"))
    result = TrainResult(steps=end, final_loss=last_loss, validation=val or {}, test=test, val_curve=curve,
                         tokens_seen=run.tokens_seen, wall_s=run.wall(), train_s=run.train_s,
                         callback_s=run.callback_s, stopped_early=stopped)
    if out is not None and ddp.main and not stopped:
        write_file(Path(out) / runstate.RESULT, json.dumps(result.as_dict(), indent=1) + "\n")
    if ddp.active:
        dist.barrier()
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
