"""Compare body-selection scores on one UCI split (evidence for the UCI results page, docs/benchmarks/uci.md).

For each candidate body, distil on a seeded 80 % of the training inputs and score at the other
20 %: the joint marginal likelihood of the teacher values, the per-point marginal density, the
teacher-mean error, the ensemble-predictive log score, and (for reference only) the test-label
NLL of the same fit. Needs the split's cached teachers (run `pyro-dlf bench uci` first).

    python benchmarks/scripts/compare_selection_scores.py concrete 0
"""
import math
import os
import sys
import warnings

import torch
warnings.filterwarnings("ignore")
from pyro_dlf import distill
from pyro_dlf_bench.datasets import load_uci
from pyro_dlf_bench.baselines import DeepEnsembleRegressor
from pyro_dlf.selection import split_design
from pyro_dlf_bench import metrics
name, seed = sys.argv[1], int(sys.argv[2])
data = load_uci(os.path.join(os.environ.get("PYRO_DLF_UCI_DIR", "../shared/data/uci"), name))
split = data.split(seed)
ens = DeepEnsembleRegressor(split.x_train.shape[1], num_members=50, hidden=(100, 100))
ens.load_state_dict(torch.load(f"benchmarks/cache/{name}_s{seed}_train_n50_100x100.pt", weights_only=True))
x = split.x_train; f = ens.member_predictions(x); v = ens.noise_variances
fit, val = split_design(len(x), 0.2, seed)
for hidden in [(50,), (100,), (50, 50), (100, 100)]:
    st = distill(x[fit], f[:, fit], num_factors=10, teacher_noise_variances=v, hidden=hidden, num_iterations=150, mmd_steps=500, seed=seed, progress=False)
    with torch.no_grad():
        joint = -st.dlf.log_marginal_likelihood(x[val], f[:, val]).sum() / f[:, val].numel()
        mu, phi = st.dlf.mean_and_loading(x[val]); var = phi.pow(2).sum(-1) + st.dlf.noise_variance
        marg = -torch.distributions.Normal(mu, var.sqrt()).log_prob(f[:, val]).mean()
        mse = (mu - f[:, val].mean(0)).pow(2).mean() / f[:, val].mean(0).var()
        vm, vv = st.predictive_mixture(x[val])
        pm = vm.mean(0); pv = (vv + vm.pow(2)).mean(0) - pm.pow(2)
        score = (0.5 * torch.log(2 * math.pi * pv) + ((f[:, val] - pm).pow(2) + v.unsqueeze(1)) / (2 * pv)).mean()
        means, variances = st.predictive_mixture(split.x_test)
        ys = split.y_standardizer
        nll = metrics.mixture_nll(ys.inverse(means), ys.inverse_variance(variances), split.y_test_original)
    print(name, seed, hidden, f"joint {float(joint):.3f} marginal {float(marg):.3f} mean-mse {float(mse):.4f} teacher-predictive {float(score):.4f} | test label NLL (80% fit) {float(nll):.3f}", flush=True)
