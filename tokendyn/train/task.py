"""What the training loop trains: a *task* supplies batches, the loss and the evaluation.

One loop (:func:`tokendyn.train.loop.train`) serves every task. A task is an object with

    name: str                       "lm", "classification", ...
    metric: str                     the headline evaluation metric ("ppl", "accuracy")
    examples_per_step: int          the global batch: examples per optimiser step
    train_batch(step, index, count) -> batch
                                    slice ``index`` of ``count`` equal slices of the global
                                    batch of optimiser step ``step`` (CPU tensors); a pure
                                    function of (step, index, count) and the task's seed, so
                                    a resumed run and a run split over processes see exactly
                                    the batches of an uninterrupted single-process run
    loss(model, batch) -> Tensor    scalar mean loss over the slice (the model may be wrapped
                                    in DistributedDataParallel)
    evaluate(model, split) -> dict  metrics on "validation" or "test": at least "loss" and
                                    ``metric`` (the plain model, in eval mode, no gradients)
    probe_input() -> Tensor         one fixed held-out input, batch of 1, that the model takes
                                    with ``output_internals=True`` (the regime monitor's batch)
    describe() -> dict              JSON-able description (data, sizes) recorded with the run
    tokens_per_example: int         tokens per example, for the tokens-seen count

:class:`Task` below is the base class with these names; :class:`LanguageModelTask` is the
causal language-model task (loss: mean next-token cross-entropy, metric: perplexity).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..resources import graph_capturing


def batch_generator(seed: int, step: int) -> torch.Generator:
    """The generator that draws the global batch of optimiser step ``step``: a pure function
    of (seed, step), so batches do not depend on what ran before."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))


def slice_rows(n: int, index: int, count: int) -> slice:
    """Rows of slice ``index`` of ``count`` equal slices of n rows (n divisible by count)."""
    if count < 1 or n % count:
        raise ConfigError(f"the global batch of {n} examples does not split into {count} equal slices "
                          "(processes × accumulation steps).")
    size = n // count
    return slice(index * size, (index + 1) * size)


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled, else a no-op context. While a CUDA graph is captured
    the cast weights are not cached (the graph records every cast it needs)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16,
                              cache_enabled=not graph_capturing())
    return torch.autocast(device.type, enabled=False)


class Task:
    """Base class of training tasks (the module docstring lists the interface)."""

    name: str = "task"
    metric: str = "loss"
    examples_per_step: int = 1
    tokens_per_example: int = 1
    autocast: bool = True           # set by the loop: bf16 autocast on CUDA

    def train_batch(self, step: int, index: int, count: int):
        raise NotImplementedError

    def loss(self, model, batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model, split: str) -> dict:
        raise NotImplementedError

    def probe_input(self) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"task": self.name, "metric": self.metric, "examples_per_step": self.examples_per_step}


class LanguageModelTask(Task):
    """Next-token prediction on a tokenised corpus.

    Training batches: ``batch_size`` windows of ``context + 1`` tokens at uniformly random
    offsets of the training split, drawn by :func:`batch_generator` (input: the first
    ``context``, target: the last ``context``). Evaluation: the split cut into consecutive
    non-overlapping windows (at most ``eval_tokens`` target tokens), mean cross-entropy
    over every target token, perplexity = exp(mean loss).

    Arguments:
        ids: {"train", "validation", "test"} -> (n,) integer token ids.
        vocab_size: tokens of the tokenizer (ids must lie below it).
        context: L, tokens per training sequence.
        batch_size: sequences per optimiser step (the global batch).
        seed: seeds the batch draws.
        eval_tokens: at most this many target tokens per evaluation (0: the whole split).
        eval_batch: sequences per evaluation forward pass.
    """

    name = "lm"
    metric = "ppl"

    def __init__(self, ids: dict, vocab_size: int, context: int, batch_size: int, seed: int = 0,
                 eval_tokens: int = 0, eval_batch: int = 16):
        for name, v in (("context", context), ("batch_size", batch_size), ("eval_batch", eval_batch)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}.")
        if eval_tokens < 0:
            raise ConfigError(f"eval_tokens must be >= 0, got {eval_tokens}.")
        self.ids = {k: v.to(torch.long) for k, v in ids.items()}
        for split in ("train", "validation", "test"):
            if split not in self.ids:
                raise DataError(f"the data has no {split} split.")
            t = self.ids[split]
            if t.numel() and int(t.max()) >= vocab_size:
                raise DataError(f"the {split} split holds token id {int(t.max())}, outside the vocabulary "
                                f"of {vocab_size}.")
        if self.ids["train"].numel() < context + 2:
            raise DataError(f"the training split has {self.ids['train'].numel()} tokens, fewer than one "
                            f"sequence of context {context} + 1; use a shorter --context or more text.")
        for split in ("validation", "test"):
            if self.ids[split].numel() < 2:
                raise DataError(f"the {split} split has fewer than 2 tokens.")
        self.vocab_size = vocab_size
        self.context = context
        self.examples_per_step = batch_size
        self.tokens_per_example = context
        self.seed = seed
        self.eval_tokens = eval_tokens
        self.eval_batch = eval_batch

    def train_batch(self, step: int, index: int, count: int):
        """(x, y), each (batch_size / count, context) int64: slice ``index`` of step ``step``'s batch."""
        data = self.ids["train"]
        rows = slice_rows(self.examples_per_step, index, count)
        starts = torch.randint(0, data.numel() - self.context, (self.examples_per_step,),
                               generator=batch_generator(self.seed, step))[rows]
        window = starts[:, None] + torch.arange(self.context + 1)
        seq = data[window]
        return seq[:, :-1], seq[:, 1:]

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        with autocast_context(x.device, self.autocast):
            logits = model(x, check_ids=False)    # the run's own token ids: no device sync
        # in float32: a bf16 log-softmax over the vocabulary loses digits that matter here
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    def eval_windows(self, split: str) -> torch.Tensor:
        """(n_windows, context + 1) consecutive windows of the split (targets do not overlap);
        a shorter last window is dropped unless it is the only one."""
        data = self.ids[split]
        L = self.context
        n_targets = data.numel() - 1
        if self.eval_tokens:
            n_targets = min(n_targets, self.eval_tokens)
        n = n_targets // L
        if n == 0:                       # a split shorter than one window: one short window
            return data[None, :n_targets + 1]
        return data[:n * L + 1].unfold(0, L + 1, L)

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict:
        """{"loss", "ppl", "tokens"} on ``split`` ("validation" or "test")."""
        windows = self.eval_windows(split)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for start in range(0, windows.shape[0], self.eval_batch):
            seq = windows[start:start + self.eval_batch].to(device)
            x, y = seq[:, :-1], seq[:, 1:]
            with autocast_context(device, self.autocast):
                logits = model(x)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            total += float(loss)
            count += y.numel()
        model.train(was_training)
        mean = total / count
        return {"loss": mean, "ppl": math.exp(min(mean, 700.0)), "tokens": count}

    def probe_input(self) -> torch.Tensor:
        """(1, L') the first ``context`` tokens of the validation split."""
        return self.ids["validation"][None, :self.context]

    def describe(self) -> dict:
        return {**super().describe(), "context": self.context, "vocab_size": self.vocab_size,
                "eval_tokens": self.eval_tokens, "seed": self.seed}
