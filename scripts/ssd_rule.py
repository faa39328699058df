"""The [derived] Mamba-2 (SSD) rule for d > 1 against simulation: writes the result of
tokendyn.dynamics.ssd_trials.check_ssd_rule as JSON (docs/THEORY.md, "Mamba-2 (SSD)").

    .venv/bin/python scripts/ssd_rule.py --n 10 --seed 0 --tokens 5 --t-end 1e3 --out results/ssd_rule_seed0.json
"""

import argparse
import json
import os
import sys
import time

from tokendyn.dynamics.ssd_trials import check_ssd_rule
from tokendyn.provenance import provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="draws per (case, d, H, G)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=5)
    ap.add_argument("--t-end", type=float, default=1e3)
    ap.add_argument("--max-evals", type=int, default=20_000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    start = time.perf_counter()
    res = check_ssd_rule(n=args.n, seed=args.seed, tokens=args.tokens, t_end=args.t_end, max_evals=args.max_evals)
    res["wall_s"] = round(time.perf_counter() - start, 1)
    res.update(provenance("python scripts/ssd_rule.py " + " ".join(sys.argv[1:])))     # device, date, commit, command
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, args.out)                # a finished file or none
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
