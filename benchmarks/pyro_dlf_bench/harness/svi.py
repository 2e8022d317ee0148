r"""EM against SVI on the same deep latent factor model, run by ``pyro-dlf bench svi``.

One UCI split's teacher ensemble (the UCI benchmark's teachers, from the same
cache) is distilled four ways, all from one MMD initialization and with the
same Adam schedule (:func:`pyro_dlf.api.scheduled_adam`, one scheduler step per
iteration):

* **EM** -- :class:`pyro_dlf.infer.EM` with the exact E-step (closed-form
  factor posterior, closed-form :math:`\sigma_f^2`, parameter expansion), run
  twice: with one pass of minibatch gradient M-steps per iteration
  (``distill``'s default) and with one full-batch M-step per iteration, each
  for as many iterations as make the same number of gradient steps as SVI
  takes (unless ``em_iterations`` is given);
* **SVI, exact guide** -- ``pyro.infer.SVI`` with
  :class:`~pyro_dlf.guides.ExactFactorPosterior` as the guide, refreshed before
  every step: the ELBO then equals the marginal likelihood at the current
  parameters and its one-particle gradient is an unbiased estimate of the
  marginal-likelihood gradient (Fisher's identity);
* **SVI, AutoNormal** -- ``pyro.infer.SVI`` with
  ``pyro.infer.autoguide.AutoNormal`` over the factors ``z`` (a mean-field
  Gaussian per teacher) and ``Trace_ELBO``: the generic Pyro recipe.

The SVI variants take full-batch steps (every design point in each ELBO).
Every ``eval_every`` iterations the *exact* negative log marginal likelihood per
observed scalar, :math:`-\frac{1}{nm}\sum_i \log p(f_i)`, is computed off the
clock, so the curves compare what each method reached against wall time.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_dlf import __version__
from pyro_dlf._progress import progress_bar
from pyro_dlf.api import distill, scheduled_adam
from pyro_dlf_bench.harness.uci import UCIBenchConfig, _teachers
from pyro_dlf_bench.datasets import load_uci
from pyro_dlf.guides import ExactFactorPosterior
from pyro_dlf.infer import EM
from pyro_dlf.models import DeepLatentFactor

__all__ = ["SVIBenchConfig", "run_svi_benchmark", "write_svi_report"]


@dataclass
class SVIBenchConfig:
    """Settings of ``pyro-dlf bench svi``."""

    data_path: str = ""
    split: int = 0
    teachers: int = 50
    num_factors: int = 10
    hidden: tuple = (50,)
    mmd_steps: int = 500
    em_iterations: Optional[int] = None
    svi_steps: int = 1500
    lr: float = 1e-2
    lr_decay: float = 0.1
    warmup: float = 0.1
    batch_size: int = 256
    evaluations: int = 30
    seed: int = 0
    output_dir: str = "benchmarks/results"
    cache_dir: Optional[str] = "benchmarks/cache"
    name: str = "em_vs_svi"
    progress: bool = True
    command: str = field(default_factory=lambda: " ".join(["pyro-dlf"] + sys.argv[1:]))


def _copy(model: DeepLatentFactor) -> DeepLatentFactor:
    """A new model (its own Pyro name, so its own parameters) with ``model``'s weights."""
    config = model.config()
    clone = DeepLatentFactor(config["in_features"], config["num_factors"], tuple(config["hidden"]),
                             config["num_outputs"], activation=config["activation"])
    clone.load_state_dict(model.state_dict())
    return clone.to(next(model.parameters()).dtype)


def _trace(name: str, num_iterations: int, step: Callable[[], None], nll: Callable[[], float],
           evaluations: int, progress: bool, steps_per_iteration: int = 1) -> dict:
    """Run ``step`` ``num_iterations`` times; ``nll()`` at ``evaluations`` evenly spaced points, off the clock."""
    every = max(num_iterations // evaluations, 1)
    seconds, iterations, values = [0.0], [0], [nll()]
    clock = 0.0
    for k in progress_bar(range(1, num_iterations + 1), desc=name, enabled=progress):
        start = time.perf_counter()
        step()
        clock += time.perf_counter() - start
        if k % every == 0 or k == num_iterations:
            seconds.append(clock)
            iterations.append(k)
            values.append(nll())
    return {"method": name, "seconds": seconds, "iterations": iterations, "nll_per_scalar": values,
            "final_nll_per_scalar": values[-1], "wall_seconds": clock,
            "gradient_steps": num_iterations * steps_per_iteration}


def run_svi_benchmark(config: SVIBenchConfig) -> dict:
    """Fit the four variants from one initialization; returns the traces and the run's provenance."""
    if not config.data_path:
        raise ValueError("data_path: give --data-path, one UCI set's folder (e.g. ../shared/data/uci/bostonHousing)")
    for name in ("em_iterations", "svi_steps", "evaluations"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ValueError(f"{name} must be a positive int, got {getattr(config, name)}")
    data = load_uci(config.data_path)
    split = data.split(config.split)
    uci = UCIBenchConfig(data_path=config.data_path, teachers=config.teachers, cache_dir=config.cache_dir, seed=0)
    teachers = _teachers(uci, data, split, split.x_train, split.y_train, "train")
    x = split.x_train
    f = teachers.member_predictions(x)
    started = time.time()
    init = distill(x, f, num_factors=config.num_factors, teacher_noise_variances=teachers.noise_variances,
                   hidden=config.hidden, num_iterations=0, mmd_steps=config.mmd_steps, lr=config.lr,
                   batch_size=config.batch_size, seed=config.seed, progress=False).dlf

    def exact_nll(model: DeepLatentFactor) -> Callable[[], float]:
        return lambda: float(-model.log_marginal_likelihood(x, f).sum() / f.numel())

    traces = []
    # EM twice: distill's own configuration (minibatch M-steps, one pass per
    # iteration), and one full-batch M-step per E-step -- the same gradient
    # information per step as full-batch SVI.
    m = x.shape[0]
    for label, batch_size in (("EM, minibatch M-steps", config.batch_size), ("EM, full-batch M-step", m)):
        model = _copy(init)
        steps = -(-m // min(batch_size, m))
        em_iterations = config.em_iterations or -(-config.svi_steps // steps)  # equal gradient steps by default
        optim = scheduled_adam(config.lr, config.lr_decay, config.warmup, em_iterations)
        em = EM(model, ExactFactorPosterior(model), optim, num_m_steps=steps, batch_size=batch_size,
                generator=torch.Generator().manual_seed(config.seed))

        def em_step(em=em, optim=optim) -> None:
            em.step(x, f)
            optim.step()

        traces.append(_trace(label, em_iterations, em_step, exact_nll(model), config.evaluations, config.progress, steps))

    for label in ("SVI, exact guide", "SVI, AutoNormal"):
        pyro.set_rng_seed(config.seed)
        model = _copy(init)
        guide = ExactFactorPosterior(model) if label == "SVI, exact guide" else AutoNormal(model)
        optim = scheduled_adam(config.lr, config.lr_decay, config.warmup, config.svi_steps)
        svi = SVI(model, guide, optim, Trace_ELBO())

        def svi_step(svi=svi, guide=guide, optim=optim, exact=label == "SVI, exact guide") -> None:
            if exact:
                guide.update(x, f)  # the E-step, in closed form
            svi.step(x, f)
            optim.step()

        traces.append(_trace(label, config.svi_steps, svi_step, exact_nll(model), config.evaluations, config.progress))

    return {
        "benchmark": "em_vs_svi",
        "command": config.command,
        "config": asdict(config),
        "dataset": {"name": data.name, "split": config.split, "design_points": int(x.shape[0]),
                    "teachers": int(f.shape[0])},
        "traces": traces,
        "versions": {"pyro_dlf": __version__, "torch": torch.__version__, "pyro": pyro.__version__,
                     "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": "cpu"},
        "wall_seconds": time.time() - started,
    }


def write_svi_report(result: dict, output_dir: str, name: str = "em_vs_svi") -> tuple[str, str]:
    """``{name}.json``, ``{name}.md`` (final likelihoods, times, the time each method needs to reach EM's final value) and ``{name}.png``."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, f"{name}.json")
    with open(json_path, "w") as fh:
        json.dump(result, fh, indent=1)
    traces = result["traces"]
    target = min(t["final_nll_per_scalar"] for t in traces if t["method"].startswith("EM"))
    start = traces[0]["nll_per_scalar"][0]
    lines = [
        f"# EM vs SVI on one deep latent factor model ({result['dataset']['name']}, split {result['dataset']['split']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs ({result['machine']['torch_threads']} "
        f"torch threads), torch {result['versions']['torch']}, pyro {result['versions']['pyro']}.  ",
        f"{result['dataset']['teachers']} teachers at {result['dataset']['design_points']} design points, q = "
        f"{result['config']['num_factors']}, body {result['config']['hidden']}; all methods start from one MMD "
        f"initialization (exact NLL per scalar {start:.4f}).",
        "",
        "| method | iterations | gradient steps | exact NLL per scalar (final) | fit time (s) | time to reach EM's best final NLL (s) |",
        "|---|---|---|---|---|---|",
    ]
    for trace in traces:
        reached = next((s for s, v in zip(trace["seconds"], trace["nll_per_scalar"]) if v <= target + 1e-4), None)
        lines.append(f"| {trace['method']} | {trace['iterations'][-1]} | {trace['gradient_steps']} | {trace['final_nll_per_scalar']:.4f} | "
                     f"{trace['wall_seconds']:.1f} | {'not reached' if reached is None else f'{reached:.1f}'} |")
    lines += ["", "Lower NLL is better; times exclude the off-clock likelihood evaluations.", "",
              f"![EM vs SVI]({name}.png)", ""]
    md_path = os.path.join(output_dir, f"{name}.md")
    with open(md_path, "w") as fh:
        fh.write("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for trace in traces:
        ax.plot(trace["seconds"], trace["nll_per_scalar"], marker=".", label=trace["method"])
    ax.set_xlabel("fit time (s)")
    ax.set_ylabel("exact NLL per scalar")
    ax.set_title(f"{result['dataset']['name']}: EM vs SVI")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, f"{name}.png"), dpi=110)
    plt.close(fig)
    return json_path, md_path
