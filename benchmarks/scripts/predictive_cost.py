"""Cost of the classification predictive against one student forward and against the ensemble it replaces.

Two settings, each timed in one process (one thread; every call timed in turn in each of 15 rounds after a
warm-up round, medians); the cost of a network
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
from pyro_dlf_bench.baselines.classifiers import ConvEnsemble, prediction_from_probs
from pyro_dlf.models import DeepLatentFactor
from pyro_dlf.nn import ConvBody


def _paragraphs(blocks: list[str]) -> list[str]:
    """Docstring paragraphs as Markdown: wrapped lines joined, each ``*`` item on its own line."""
    lines = []
    for block in blocks:
        text = " ".join(line.strip() for line in block.splitlines())
        lines += [("* " + item.strip()) if k else item.strip() for k, item in enumerate(text.split("* ")) if item.strip()] + [""]
    return lines[:-1]


def _interleaved_medians(calls: dict, repeats: int = 15) -> dict:
    """Median seconds of each call, the calls timed in turn within every round (after one warm-up
    round): a load that comes and goes then falls on all of them alike, and the ratios stay fair."""
    times = {name: [] for name in calls}
    with torch.no_grad():
        for round_ in range(repeats + 1):
            for name, fn in calls.items():
                start = time.perf_counter()
                fn()
                if round_:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _student(num_factors: int, body: nn.Module = None, in_features: int = None, body_features: int = None) -> Student:
    torch.manual_seed(0)
    dlf = DeepLatentFactor(in_features, num_factors, (50,), 10, body=body, body_features=body_features, covariance="full")
    return Student(dlf, "classification", centered_logits=True)


def _rows(ensemble, students: dict, x: torch.Tensor) -> tuple[float, list[str]]:
    """The ensemble's predictive seconds and one table row per student, all timed in the same rounds."""
    calls = {"ensemble": ensemble}
    for name, student in students.items():
        calls.update({(name, "forward"): lambda s=student: s.dlf.mean_and_loading(x), (name, "rule"): lambda s=student: s.predict(x),
                      (name, "draws"): lambda s=student: s.predict(x, 1000)})
    t = _interleaved_medians(calls)
    rows = []
    for name, student in students.items():
        forward, rule, draws, ens = t[(name, "forward")], t[(name, "rule")], t[(name, "draws")], t["ensemble"]
        rows.append(f"| {name} | {student.integration_rule().name} | {1e3 * forward:.1f} | {1e3 * rule:.1f} | {1e3 * draws:.1f} | "
                    f"{rule / forward:.2f} | {draws / forward:.1f} | {ens / rule:.2f} | {ens / draws:.2f} |")
    return t["ensemble"], rows


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
    cnn_student = _student(4, body=ConvBody(1, (28, 28), (8, 16), 32), body_features=32)
    cnn_seconds, cnn_rows = _rows(lambda: cnns.predict(images), {"CNN body, full, q = 4": cnn_student}, images)
    lines = ["# Predictive cost: classification students", "",
             "Command: `python benchmarks/scripts/predictive_cost.py --out benchmarks/results/predictive_cost.md`  ",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} (1 thread), load average "
             f"{os.getloadavg()[0]:.1f} at the start (other jobs share the CPUs above 1); wall time {{wall}} min.", "",
             *_paragraphs(__doc__.split("\n\n")[1:3]), "",
             f"## MNIST: 5 CNNs, predictive {1e3 * cnn_seconds:.1f} ms per 1,000 images", "", *header, *cnn_rows, ""]
    inputs = torch.randn(1000, 16)
    mlps = [nn.Sequential(nn.Linear(16, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)).eval() for _ in range(50)]
    mlp_seconds, mlp_rows = _rows(lambda: prediction_from_probs(torch.stack([m(inputs) for m in mlps]).double().softmax(-1)),
                                  {f"MLP body [50], full, q = {q}": _student(q, in_features=16) for q in (4, 10)}, inputs)
    lines += [f"## Tabular: 50 MLPs [100, 100], 10 classes, predictive {1e3 * mlp_seconds:.1f} ms per 1,000 inputs", "", *header,
              *mlp_rows]
    text = "\n".join(lines).replace("{wall}", f"{(time.time() - started) / 60:.1f}") + "\n"
    with open(args.out, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
