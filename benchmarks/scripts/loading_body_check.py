"""Does a label-free score tell when the separate loading body helps? (Evidence for the UCI results page, docs/benchmarks/uci.md.)

Reads a merged UCI result with the rows `DLF` (one body for mean and loadings) and `DLF, loading body 1×50`
(`pyro-dlf bench uci --ablations loadings`). Both rows chose their mean body on the same held-out 20 % of
the design points by the ensemble-predictive log score, and each records every candidate's held-out score
(`body_selection.validation_nll`). Per split: does the best loading-body candidate score better than the
best shared-body one? And the test NLL of a per-split rule that takes the row whose best held-out score is
lower -- computed from the two rows' recorded fits, no refit, no labels in the choice. Test NLLs are
reported relative to the teacher ensemble on the same splits.

    python benchmarks/scripts/loading_body_check.py benchmarks/results/uci_loading_body.json [--out FILE.md]
"""
import argparse
import json
import sys

from pyro_dlf._files import atomic_write
from pyro_dlf_bench.harness.uci import LOADING_BODY


def _relative(value: float, reference: float) -> str:
    return f"{100 * (value - reference) / abs(reference):+.1f} %"


def report(rows: list[dict], command: str) -> list[str]:
    by_key = {(r["dataset"], r["split"], r["method"]): r for r in rows}
    lines = ["# The separate loading body: the held-out score against the test labels", "", f"Command: `{command}`", "",
             "Per set, over the splits that have both rows: how often the best held-out score among the loading-body "
             "candidates beats the best among the shared-body ones (label-free), the mean difference of those best scores "
             "(negative: the loading body is better), and the test NLL relative to the ensemble of `DLF`, of "
             f"`{LOADING_BODY}` and of the per-split rule that takes the row with the better held-out score.", "",
             "| set | splits | loading body better (held-out) | mean difference | `DLF` | loading body | per-split rule |",
             "|---|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        splits = sorted(s for (d, s, m) in by_key if d == dataset and m == LOADING_BODY and (d, s, "DLF") in by_key)
        if not splits:
            continue
        wins, differences, nll = 0, [], {"ensemble": [], "DLF": [], LOADING_BODY: [], "rule": []}
        for split in splits:
            shared, separate = by_key[(dataset, split, "DLF")], by_key[(dataset, split, LOADING_BODY)]
            difference = min(separate["body_selection"]["validation_nll"]) - min(shared["body_selection"]["validation_nll"])
            wins += difference < 0
            differences.append(difference)
            nll["ensemble"].append(by_key[(dataset, split, "teacher ensemble")]["nll"])
            nll["DLF"].append(shared["nll"])
            nll[LOADING_BODY].append(separate["nll"])
            nll["rule"].append((separate if difference < 0 else shared)["nll"])
        mean = {key: sum(values) / len(values) for key, values in nll.items()}
        lines.append(f"| {dataset} | {len(splits)} | {wins} | {sum(differences) / len(differences):+.4f} | "
                     + " | ".join(_relative(mean[key], mean["ensemble"]) for key in ("DLF", LOADING_BODY, "rule")) + " |")
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", help="a merged UCI result (.json) with the DLF and loading-body rows")
    parser.add_argument("--out", default=None, help="write the Markdown report here (atomically)")
    args = parser.parse_args()
    try:
        with open(args.result) as fh:
            rows = json.load(fh)["rows"]
    except (OSError, ValueError, KeyError) as error:
        parser.error(f"result: cannot read a UCI result from {args.result!r} ({error})")
    lines = report(rows, "python " + " ".join(sys.argv))
    if args.out:
        atomic_write(args.out, lambda fh: fh.write("\n".join(lines)))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
