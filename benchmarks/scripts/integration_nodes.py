"""How many nodes the classification predictive's rule needs at q factors, on known logit laws.

Synthetic Gaussian logit laws μ + B u, u ~ N(0, I_q), c = 10 classes, at 2,000 inputs each: μ has one class
ahead by a margin, B has q columns with spread decaying as exp(−0.3 k) and an overall scale. Two laws per q: a
narrow one (scale 0.3, margin 5: little disagreement, as the MNIST teachers at test images) and a wide one
(scale 1, margin 5: per-logit variance about 2, mutual information about 0.3 nats). Labels are drawn from the
reference predictive, so the NLL is that of a calibrated model. The reference is the mirrored Sobol rule with
2^16 nodes; each row gives a rule's error in NLL, the mean absolute error of the mutual information and the
largest error of a probability, with 1,000 and 10,000 draws for comparison.

    python benchmarks/scripts/integration_nodes.py --out benchmarks/results/integration_nodes.md
"""
import argparse
import platform
import time

import torch

from pyro_dlf.quadrature import gaussian_rule, integrate_softmax, monte_carlo_rule, sobol_rule
from pyro_dlf_bench.metrics import categorical_nll

INPUTS, CLASSES = 2000, 10
LAWS = {"narrow": 0.3, "wide": 1.0}
MARGIN = 5.0


def _law(q: int, scale: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.randn(INPUTS, CLASSES, generator=generator, dtype=torch.float64)
    top = torch.randint(CLASSES, (INPUTS,), generator=generator)
    mean[torch.arange(INPUTS), top] += MARGIN
    spread = torch.exp(-0.3 * torch.arange(q, dtype=torch.float64))
    factor = torch.randn(INPUTS, CLASSES, q, generator=generator, dtype=torch.float64) * spread * scale
    return mean, factor


def _table(q: int, name: str, scale: float) -> list[str]:
    generator = torch.Generator().manual_seed(1000 * q + int(100 * scale))
    law = _law(q, scale, generator)
    reference = integrate_softmax(*law, sobol_rule(q, 1 << 16))
    y = torch.multinomial(reference[0], 1, generator=generator).squeeze(1)
    variance = float((law[1] ** 2).sum(-1).mean())
    reference_nll = float(categorical_nll(reference[0], y))
    lines = [f"## q = {q}, {name} law (logit variance {variance:.2f}, reference NLL {reference_nll:.4f}, "
             f"mean mutual information {float(reference[3].mean()):.4f} nats)", "",
             "| rule | nodes | NLL − ref | mean abs MI error | max abs prob error |", "|---|---|---|---|---|"]
    default = gaussian_rule(q).name
    rules = [gaussian_rule(q)] + [sobol_rule(q, k) for k in (512, 256, 128, 64) if sobol_rule(q, k).name != default]
    rules += [monte_carlo_rule(q, 1000, 0), monte_carlo_rule(q, 10_000, 0), monte_carlo_rule(q, 10_000, 1)]
    for rule in rules:
        s = integrate_softmax(*law, rule)
        mark = " (default)" if rule.name == default else ""
        lines.append(f"| {rule.name}{mark} | {rule.num_nodes:,} | {float(categorical_nll(s[0], y)) - reference_nll:+.1e} | "
                     f"{float((s[3] - reference[3]).abs().mean()):.1e} | {float((s[0] - reference[0]).abs().max()):.1e} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--factors", type=int, nargs="+", default=[4, 10])
    args = parser.parse_args()
    started = time.time()
    torch.set_num_threads(1)
    lines = ["# Integration rules against the number of factors (synthetic logit laws)", "",
             f"Command: `python benchmarks/scripts/integration_nodes.py --out {args.out}"
             + (f" --factors {' '.join(map(str, args.factors))}" if args.factors != [4, 10] else "") + "`  ",
             f"Machine: {platform.platform()}, 1 thread, torch {torch.__version__}; wall time {{wall:.1f}} min.", "",
             __doc__.split("\n\n")[1].replace("\n", " "), ""]
    for q in args.factors:
        for name, scale in LAWS.items():
            lines += _table(q, name, scale)
    text = "\n".join(lines).replace("{wall:.1f}", f"{(time.time() - started) / 60:.1f}")
    with open(args.out, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
