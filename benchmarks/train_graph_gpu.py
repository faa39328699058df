"""Training steps eager against --cuda-graph (tokendyn.train.loop.GraphedStep) on one GPU, through
``tokendyn.train.train`` on random data: the lm-scenarios full-scale model by default
(d_model 768, 8 layers, vocabulary 8192, context 1024, batch 32, bf16 autocast), or with
``--task reorder`` the reorder experiment's full-scale hybrid classifier in one of its settings
(``--setting``, default authors; batch 256 of random 32×32×3 images, through ``train_image``).

    python benchmarks/train_graph_gpu.py --out results/train_graph_gpu.json [--rounds 2 --steps 40]
    python benchmarks/train_graph_gpu.py --task reorder --setting authors --out results/train_graph_reorder_gpu.json

Each round trains a fresh model eagerly, then with --cuda-graph, for ``--steps`` steps; a mode's
time per step is the median over rounds of (optimiser-step seconds after the first
``--skip`` steps) / steps, read from the run's metrics (``elapsed_s`` of its train records, one every
10 steps). The graphed run's first three steps are its eager warm-up and the fourth includes the
capture, so ``--skip`` (default 10) leaves them out. ratio = graph ms / eager ms (below 1: the graph is faster).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import bench_parser, bench_provenance  # noqa: E402 -- after the sys.path setup

from tokendyn.model import MambaConfig, MambaLM  # noqa: E402 -- after the sys.path setup
from tokendyn.train import LanguageModelTask, TrainConfig, train  # noqa: E402 -- after the sys.path setup


def parse_args(argv=None):
    ap = bench_parser("results/train_graph_gpu.json", __doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--skip", type=int, default=10)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--task", default="lm", choices=["lm", "reorder"])
    ap.add_argument("--setting", default="authors", help="with --task reorder: a setting of the reorder experiment")
    ap.add_argument("--modes", default="eager,graph", help="comma-separated: eager, graph (a process's share "
                    "of the GPU when several train at once is timed by running this with --modes eager in each)")
    args = ap.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"eager", "graph"}:
        ap.error("--modes takes eager and/or graph")
    if args.task == "reorder":
        from tokendyn.experiments.reorder import EXPERIMENT

        if args.setting not in EXPERIMENT.settings:
            ap.error(f"--setting is one of {', '.join(EXPERIMENT.settings)}, got {args.setting!r}")
    if min(args.rounds, args.steps - args.skip, args.skip) < 1 or args.steps % 10 or args.skip % 10:
        ap.error("need --rounds >= 1 and --skip < --steps, both multiples of 10 (the train records' interval)")
    return args


def one_run(args, graph: bool, workdir: Path) -> float:
    """ms per optimiser step after the first ``args.skip`` steps."""
    out = workdir / ("graph" if graph else "eager")
    if args.task == "reorder":
        reorder_run(args, graph, out)
    else:
        lm_run(args, graph, out)
    recs = [r for r in map(json.loads, (out / "metrics.jsonl").open()) if r["kind"] == "train"]
    t = {r["step"]: r["elapsed_s"] for r in recs}
    return 1000 * (t[args.steps] - t[args.skip]) / (args.steps - args.skip)


def reorder_run(args, graph: bool, out: Path) -> None:
    """The reorder grid's full-scale classifier in ``args.setting``, one epoch of random images
    just over ``args.steps`` batches (so that no validation falls inside the timed steps)."""
    from dataclasses import replace

    from tokendyn.data.images import ImageDataset, ImageSplit
    from tokendyn.experiments.reorder import EXPERIMENT, model_spec, train_config
    from tokendyn.train.images import train_image

    p = EXPERIMENT.scales["full"]
    g = torch.Generator().manual_seed(1)

    def split(n):
        return ImageSplit(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                          torch.randint(0, 10, (n,), generator=g))

    data = ImageDataset(split(int(p["batch_size"] * (args.steps + 2) / 0.9)), split(512),
                        [str(i) for i in range(10)], "random images")
    cfg = replace(train_config(p, 0, graph), log_every=10)     # a train record every 10 steps, as timed
    train_image(data, model_spec(p, EXPERIMENT.settings[args.setting]), cfg, batch_size=p["batch_size"], epochs=1,
                out=out, device=args.device, crop_padding=p["crop_padding"], progress=False)


def lm_run(args, graph: bool, out: Path) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ids = {s: torch.randint(0, args.vocab, (200_000,), generator=g) for s in ("train", "validation", "test")}
    model = MambaLM(MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=args.vocab))
    task = LanguageModelTask(ids, args.vocab, context=args.context, batch_size=args.batch, eval_tokens=args.context)
    # a train record (and its one device sync) every 10 steps, as the experiments log
    cfg = TrainConfig(steps=args.steps, log_every=10, eval_every=0, checkpoint_every=0, cuda_graph=graph)
    train(model, task, cfg, out=out, device=args.device, progress=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("train_graph_gpu: no CUDA device here.", file=sys.stderr)
        return 2
    prov = bench_provenance(__file__, args, argv)
    times = {m: [] for m in args.modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in args.modes:
                times[name].append(one_run(args, name == "graph", Path(tmp) / f"r{r}"))
                print(f"round {r}: {name} {times[name][-1]:.2f} ms/step", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    keys = ("task", "setting", "steps", "skip", "rounds") if args.task == "reorder" else \
        ("task", "d_model", "n_layer", "vocab", "context", "batch", "steps", "skip", "rounds")
    result = {"provenance": prov, "config": {k: getattr(args, k) for k in keys},
              "ms_per_step": med, "rounds_ms": times,
              "ratio_graph_over_eager": med["graph"] / med["eager"] if len(med) == 2 else None,
              "tokens_per_s": ({k: args.batch * args.context / (v / 1000) for k, v in med.items()}
                               if args.task == "lm" else None)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("ms_per_step", "ratio_graph_over_eager")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
