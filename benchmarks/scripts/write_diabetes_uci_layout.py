"""Write scikit-learn's diabetes data (442 × 10, shipped with scikit-learn) in the UCI layout.

A regression set outside the seven shipped UCI folders, for checking that
``pyro-dlf bench uci --data-path FOLDER`` needs nothing but the folder:

    python benchmarks/scripts/write_diabetes_uci_layout.py /tmp/uci_extra/diabetes
    pyro-dlf bench uci --data-path /tmp/uci_extra/diabetes --splits 3 --name uci_diabetes

The folder gets ``data.txt`` (features then target, whitespace-separated),
``index_features.txt`` (0-based feature columns) and ``index_target.txt``,
written by :func:`pyro_dlf_bench.datasets.write_uci_layout`.
"""
import sys

from sklearn.datasets import load_diabetes

from pyro_dlf_bench.datasets import write_uci_layout


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python benchmarks/scripts/write_diabetes_uci_layout.py FOLDER", file=sys.stderr)
        return 2
    x, y = load_diabetes(return_X_y=True, scaled=False)
    try:
        folder = write_uci_layout(sys.argv[1], x, y)
    except (OSError, ValueError) as error:
        print(f"write_diabetes_uci_layout.py: error: FOLDER: {error}", file=sys.stderr)
        return 2
    print(f"wrote {x.shape[0]} rows x {x.shape[1]} features to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
