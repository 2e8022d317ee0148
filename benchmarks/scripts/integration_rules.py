"""Accuracy of the classification predictive's integration rules on the teachers' own logit laws.

At every test and OOD image (MNIST against Fashion-MNIST, or the reverse with ``--dataset
fashion-mnist``), the cached teacher CNNs of the images benchmark
(``pyro-dlf bench images --dataset mnist --seed 0`` writes them to ``benchmarks/cache``) give five
logit vectors; their mean and the rank-4 factor of their covariance define a Gaussian logit law
μ + B u, u ~ N(0, I_4), of the realistic scale a distilled full student with q = 4 carries. Each rule
integrates softmax and the entropies under that law; the table compares NLL, ECE, AUROC (total
entropy, mutual information) and the mean absolute error of the mutual information with a
Gauss–Hermite 6^4 reference (1,296 nodes).

    python benchmarks/scripts/integration_rules.py --data-dir ../shared/data --out benchmarks/results/integration_rules.md
    python benchmarks/scripts/integration_rules.py --data-dir ../shared/data --dataset fashion-mnist \
        --out benchmarks/results/integration_rules_fashion.md
"""
import argparse
import math
import platform
import time

import torch

from pyro_dlf_bench import metrics
from pyro_dlf_bench.harness import images
from pyro_dlf.quadrature import GaussianRule, gauss_hermite_rule, gaussian_rule, integrate_softmax, monte_carlo_rule, sobol_rule


def _laws(logits: torch.Tensor, rank: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (m, c) and rank-``rank`` factor B (m, c, rank) of the teachers' logits (n, m, c)."""
    values = logits.double().permute(1, 2, 0)
    mean = values.mean(-1)
    U, S, _ = torch.linalg.svd((values - mean.unsqueeze(-1)) / math.sqrt(values.shape[-1]), full_matrices=False)
    return mean, U[..., :rank] * S[..., None, :rank]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.time()
    torch.set_num_threads(1)
    config = images.ImagesBenchConfig(data_dir=args.data_dir, dataset=args.dataset, seed=0)
    data = images._load(config)
    teachers, seconds = images._teachers(config, data)
    if seconds:
        print("the teachers were trained, not read from the cache")
    with torch.no_grad():
        logits = {name: torch.cat([torch.stack([m(x[i:i + 1000]) for m in teachers.members]) for i in range(0, x.shape[0], 1000)], 1)
                  for name, x in (("test", data.image.x_test), ("ood", data.x_ood))}
    laws = {name: _laws(value) for name, value in logits.items()}
    y = data.image.y_test

    def score(rule: GaussianRule) -> dict:
        test, ood = integrate_softmax(*laws["test"], rule), integrate_softmax(*laws["ood"], rule)
        return {"probs": test[0], "mi": test[3], "nll": float(metrics.categorical_nll(test[0], y)),
                "ece": float(metrics.expected_calibration_error(test[0], y)),
                "auroc_h": metrics.auroc(test[1], ood[1]), "auroc_mi": metrics.auroc(test[3], ood[3])}

    reference = score(gauss_hermite_rule(4, 6))
    rules = [gaussian_rule(4), gauss_hermite_rule(4, 3), sobol_rule(4, 512),
             monte_carlo_rule(4, 1000, 0), monte_carlo_rule(4, 1000, 1), monte_carlo_rule(4, 10_000, 0)]
    lines = [f"# Integration rules on the teachers' logit laws ({args.dataset})", "",
             f"Command: `python benchmarks/scripts/integration_rules.py --data-dir ../shared/data --dataset {args.dataset} --out {args.out}`  ",
             f"Machine: {platform.platform()}, 1 thread, torch {torch.__version__}; wall time {{wall:.1f}} min.", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             f"Reference (Gauss–Hermite 6^4): NLL {reference['nll']:.5f}, ECE {reference['ece']:.5f}, AUROC H {reference['auroc_h']:.5f}, "
             f"AUROC MI {reference['auroc_mi']:.5f}, mean MI {float(reference['mi'].mean()):.4f} nats.", "",
             "| rule | nodes | NLL − ref | ECE − ref | AUROC H − ref | AUROC MI − ref | mean abs MI error | max abs prob error |",
             "|---|---|---|---|---|---|---|---|"]
    for rule in rules:
        s = score(rule)
        default = " (default)" if rule.name == gaussian_rule(4).name else ""
        lines.append(f"| {rule.name}{default} | {rule.num_nodes} | {s['nll'] - reference['nll']:+.1e} | {s['ece'] - reference['ece']:+.1e} | "
                     f"{s['auroc_h'] - reference['auroc_h']:+.1e} | {s['auroc_mi'] - reference['auroc_mi']:+.1e} | "
                     f"{float((s['mi'] - reference['mi']).abs().mean()):.1e} | {float((s['probs'] - reference['probs']).abs().max()):.1e} |")
    text = "\n".join(lines).replace("{wall:.1f}", f"{(time.time() - started) / 60:.1f}") + "\n"
    with open(args.out, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
