"""Longer runs against a comparison's linear floor (docs/evidence.md, "Trained longer"): each run's rsum on every
test split and the 95% paired bootstrap interval of run minus the floor (the floor's seeds averaged, as
`temde compare` does).

`python benchmarks/runs_vs_floor.py DATA COMPARE_DIR RUN [RUN ...]`: DATA the precomp folder, COMPARE_DIR a
`temde compare` output folder trained on it (its runs/linear-seed*/ hold the floor's test ranks), RUN a `temde
train` run folder (its best.pt is scored; ranks are cached beside it, as compare caches them).
"""
import sys
from pathlib import Path

from temde.bootstrap import rsum_difference
from temde.data import load_split
from temde.evaluation import metrics_from_ranks
from temde.experiments.compare import FLOOR, load_ranks, score_run, test_splits_of


def main(data: Path, compare_dir: Path, runs: list[Path]) -> None:
    floors = sorted((compare_dir / "runs").glob(f"{FLOOR}-seed*"))
    if not floors:
        raise SystemExit(f"{compare_dir}: no runs/{FLOOR}-seed*/ folders (not a `temde compare` output?)")
    splits = test_splits_of(data, None)
    layouts = {name: load_split(data, name, validate=False).layout for name in splits}
    floor = {name: [load_ranks(folder / f"ranks_{name}.npz") for folder in floors] for name in splits}
    floor_rsum = {name: sum(metrics_from_ranks(r.i2t, r.t2i)["rsum"] for r in floor[name]) / len(floors)
                  for name in splits}
    scored = {}
    for run in runs:
        ranks = scored[run] = score_run(run, data, splits, "cpu")
        for name in splits:
            rsum = metrics_from_ranks(ranks[name].i2t, ranks[name].t2i)["rsum"]
            diff = rsum_difference([ranks[name]], floor[name], layouts[name])
            print(f"{run.name} {name}: rsum {rsum:.1f}, floor {floor_rsum[name]:.1f} ({len(floors)} seeds); run minus "
                  f"floor {diff.estimate:+.1f} [{diff.low:+.1f}, {diff.high:+.1f}]")
    first = runs[0]
    for other in runs[1:]:
        for name in splits:
            diff = rsum_difference([scored[first][name]], [scored[other][name]], layouts[name])
            print(f"{first.name} minus {other.name} {name}: {diff.estimate:+.1f} [{diff.low:+.1f}, {diff.high:+.1f}]")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), [Path(arg) for arg in sys.argv[3:]])
