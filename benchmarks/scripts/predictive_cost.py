"""Cost of the classification predictive against one student forward and against the ensemble it replaces.

Two settings, each timed in one process (one thread, median of 5 after a warm-up); the cost of a network
does not depend on its weights, so the networks keep their random initial weights:

* MNIST: five teacher CNNs (channels 16, 32, width 64) against the images benchmark's full student
  (a CNN body with channels 8, 16, width 32; q = 4), on 1,000 images of 28 × 28;
* tabular: fifty teacher MLPs [100, 100] with 10 classes against a full student (body [50]; q = 4
  and q = 10, the cap of ``num_factors="auto"``), on 1,000 inputs with 16 features.

For each student: one forward (μ and Φ), the default predictive (the fixed integration rule),
and the 1,000-draw predictive; ratios to the forward and to the ensemble's predictive
(its members' forwards, their softmax averaged and the entropy decomposition, as the benchmarks compute it).

    python benchmarks/scripts/predictive_cost.py --out benchmarks/results/predictive_cost.md
"""
import argparse
import os
import platform
import statistics
import time

import torch
from torch import nn

from pyro_dlf import Student
from pyro_dlf.baselines.classifiers import ConvEnsemble, prediction_from_probs
from pyro_dlf.models import DeepLatentFactor
from pyro_dlf.nn import ConvBody


def _median_seconds(fn, repeats: int = 5) -> float:
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _student(num_factors: int, body: nn.Module = None, in_features: int = None, body_features: int = None) -> Student:
    torch.manual_seed(0)
    dlf = DeepLatentFactor(in_features, num_factors, (50,), 10, body=body, body_features=body_features, covariance="full")
    return Student(dlf, "classification", centered_logits=True)


def _row(name: str, student: Student, x: torch.Tensor, ensemble_seconds: float) -> str:
    forward = _median_seconds(lambda: student.dlf.mean_and_loading(x))
    rule = _median_seconds(lambda: student.predict(x))
    draws = _median_seconds(lambda: student.predict(x, 1000))
    return (f"| {name} | {student.integration_rule().name} | {1e3 * forward:.1f} | {1e3 * rule:.1f} | {1e3 * draws:.1f} | "
            f"{rule / forward:.2f} | {draws / forward:.1f} | {ensemble_seconds / rule:.2f} | {ensemble_seconds / draws:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    header = ["| student | rule | forward (ms) | default rule (ms) | S = 1000 (ms) | rule / forward | S = 1000 / forward "
              "| ensemble / rule | ensemble / S = 1000 |", "|---|---|---|---|---|---|---|---|---|"]
    torch.manual_seed(0)
    images = torch.rand(1000, 1, 28, 28)
    cnns = ConvEnsemble((1, 28, 28), 10, 5, (16, 32), 64).eval()
    cnn_seconds = _median_seconds(lambda: cnns.predict(images))
    cnn_student = _student(4, body=ConvBody(1, (28, 28), (8, 16), 32), body_features=32)
    lines = ["# Predictive cost: classification students", "",
             "Command: `python benchmarks/scripts/predictive_cost.py --out benchmarks/results/predictive_cost.md`  ",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} (1 thread); wall time {{wall}} min.", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "", __doc__.split("\n\n")[2].replace("\n", " "), "",
             f"## MNIST: 5 CNNs, predictive {1e3 * cnn_seconds:.1f} ms per 1,000 images", "", *header,
             _row("CNN body, full, q = 4", cnn_student, images, cnn_seconds), ""]
    inputs = torch.randn(1000, 16)
    mlps = [nn.Sequential(nn.Linear(16, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)).eval() for _ in range(50)]
    mlp_seconds = _median_seconds(lambda: prediction_from_probs(torch.stack([m(inputs) for m in mlps]).double().softmax(-1)))
    lines += [f"## Tabular: 50 MLPs [100, 100], 10 classes, predictive {1e3 * mlp_seconds:.1f} ms per 1,000 inputs", "", *header]
    for q in (4, 10):
        lines.append(_row(f"MLP body [50], full, q = {q}", _student(q, in_features=16), inputs, mlp_seconds))
    text = "\n".join(lines).replace("{wall}", f"{(time.time() - started) / 60:.1f}") + "\n"
    with open(args.out, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
