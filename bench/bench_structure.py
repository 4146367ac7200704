"""Cost of the structure measures and the 1-NN test on the in-training metrics' set size (not a test).

On 256 demo-shaped samples (the demo's train windows, 4 x 64 x 48), one thread, best of the rounds:
the structure sums of the pooled figures (``structure_counts``), the per-sample structure features, the
1-NN feature space (with the precision/recall statistics), the 1-NN test of 256 against 256 samples, all
music metrics (which include the structure sums), and a whole ``RealReference.compare`` (copy check
against the demo's 3,337 training samples included). Usage::

    b2b shards build --source demo --output shards/demo      # if not built yet
    python bench/bench_structure.py --data shards/demo
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from b2b.data.manifest import shards_spec  # noqa: E402
from b2b.data.reading import iter_samples  # noqa: E402
from b2b.eval.diversity import nn_accuracy  # noqa: E402
from b2b.eval.metrics import music_metrics  # noqa: E402
from b2b.eval.reference import RealReference, two_sample_features  # noqa: E402
from b2b.eval.structure import structure_counts, structure_features  # noqa: E402


def best_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shards/demo", help="shards to draw samples from")
    parser.add_argument("--n", type=int, default=256, help="samples per set (default 256)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    spec = shards_spec(args.data)
    train = np.stack(list(iter_samples(args.data, "train")))
    rolls = train[np.random.default_rng(0).choice(len(train), args.n, replace=False)]
    reference = RealReference.from_shards(args.data, spec, kept=args.n)
    features = two_sample_features(rolls, spec)
    other = two_sample_features(reference.samples, spec)
    rows = {
        "structure_counts (pooled sums)": lambda: structure_counts(rolls, spec),
        "structure_features (per sample)": lambda: structure_features(rolls, spec),
        "two_sample_features (1-NN space)": lambda: two_sample_features(rolls, spec),
        f"nn_accuracy ({args.n} vs {len(other)})": lambda: nn_accuracy(features, other),
        "music_metrics (all, structure included)": lambda: music_metrics(rolls, spec),
        "RealReference.compare (everything)": lambda: reference.compare(rolls),
    }
    print(f"{args.n} samples of shape {list(spec.shape)} from {args.data}; one thread, best of {args.rounds}")
    print("| step | ms |")
    print("|---|---|")
    for name, fn in rows.items():
        print(f"| {name} | {best_ms(fn, args.rounds):.1f} |")


if __name__ == "__main__":
    main()
