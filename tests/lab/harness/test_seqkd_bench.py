"""The sequence-level distillation benchmark: the student's layers, sampling, the objectives, the pipeline, the report."""

import importlib.util
import json
import math
import zlib

import pytest
import torch

import shared_data
from pyro_dlf_bench.datasets.text import ROTTEN_TOMATOES_FILE

_TEXT = shared_data.data_folder("text")
SHARED_TEXT = _TEXT if _TEXT is not None and (_TEXT / ROTTEN_TOMATOES_FILE).is_file() else None
HAS_TEXT_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("transformers", "peft", "rouge_score"))
# CI installs the lab's text extra (.ci/run), so these run there; a core-only install skips them with the reason.
needs_extra = pytest.mark.skipif(not HAS_TEXT_EXTRA, reason="the lab's text extra (transformers, peft, rouge-score) is not installed")


def _tiny_llama(layers: int = 4, seed: int = 0):
    """A random decoder whose next-token distributions are far from uniform (the final norm scaled up), so that
    its layers matter: a student of some of them starts measurably far from it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=True, eos_token_id=1, bos_token_id=2, pad_token_id=0))
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    return model.eval()


def test_spread_layers_follow_the_published_layer_tables():
    from pyro_dlf_bench.language_model import spread_layers

    # The tables f-DISTILL's students come from (12 → 3, 4, 6 and 24 → 4 layers).
    assert spread_layers(12, 3) == [0, 6, 11] and spread_layers(12, 4) == [0, 4, 8, 11]
    assert spread_layers(12, 6) == [0, 2, 4, 7, 9, 11] and spread_layers(24, 4) == [0, 8, 16, 23]
    assert spread_layers(30, 6) == [0, 6, 12, 18, 24, 29] and spread_layers(5, 5) == [0, 1, 2, 3, 4]
    assert spread_layers(7, 1) == [0]
    for n in range(1, 40):
        for k in range(1, n + 1):
            layers = spread_layers(n, k)
            assert len(layers) == k and layers == sorted(set(layers)) and layers[0] == 0 and (k == 1 or layers[-1] == n - 1)
    with pytest.raises(ValueError, match="keep"):
        spread_layers(4, 5)


@needs_extra
def test_a_layer_copied_student_decodes_with_its_cache_as_without():
    """Kept layers are renumbered, so the key/value cache of a spread student gives the full forward's logits."""
    from pyro_dlf_bench.language_model import layer_copied_decoder

    teacher = _tiny_llama(layers=5)
    student = layer_copied_decoder(teacher, [0, 2, 4]).eval()
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2]
    torch.testing.assert_close(student.model.layers[2].mlp.up_proj.weight, teacher.model.layers[4].mlp.up_proj.weight)
    ids = torch.tensor([[5, 9, 17, 33, 65, 12]])
    with torch.no_grad():
        full = student(input_ids=ids).logits[:, -1]
        out = student(input_ids=ids[:, :-1], use_cache=True)
        name = "cache" if "cache" in out else "past_key_values"
        step = student(input_ids=ids[:, -1:], use_cache=True, **{name: out[name]}).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layers"):
        layer_copied_decoder(teacher, [0, 5])


def test_nucleus_sampling_keeps_the_smallest_set_reaching_top_p():
    from pyro_dlf_bench.language_model import _nucleus

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.9, 0.03, 0.02]])
    assert (_nucleus(probs, 0.9) > 0).tolist() == [[True, True, True, False], [False, True, False, False]]
    assert (_nucleus(probs, 0.5) > 0).tolist() == [[True, False, False, False], [False, True, False, False]]
    torch.testing.assert_close(_nucleus(probs, 1.0), probs)
    assert _nucleus(probs, None) is probs


def test_skewed_js_halves_reduce_to_the_symmetric_js_and_vanish_at_equality():
    from pyro_dlf_bench.baselines.divergences import f_divergence, skew_js_terms

    torch.manual_seed(0)
    p, q = torch.randn(5, 9).log_softmax(-1), torch.randn(5, 9).log_softmax(-1)
    teacher_half, student_half = skew_js_terms(p, q, 0.5)
    torch.testing.assert_close(0.5 * teacher_half + 0.5 * student_half, f_divergence(p, q, "js", reduction="none"))
    # By direct computation at beta = 0.85.
    m = 0.85 * q.exp() + 0.15 * p.exp()
    teacher_half, student_half = skew_js_terms(p, q, 0.85)
    torch.testing.assert_close(teacher_half, (p.exp() * (p - m.log())).sum(-1))
    torch.testing.assert_close(student_half, (q.exp() * (q - m.log())).sum(-1))
    assert all(float(t.abs().max()) < 1e-6 for t in skew_js_terms(p, p, 0.85))
    with pytest.raises(ValueError, match="beta"):
        skew_js_terms(p, q, 1.0)


def test_paired_ratio_difference_is_the_delta_method_for_pooled_averages():
    from pyro_dlf_bench.metrics import paired_difference, paired_ratio_difference

    a, b = torch.tensor([3.0, 4.0, 5.0, 6.0]), torch.tensor([2.0, 4.0, 4.0, 5.0])
    # Equal sizes: the plain paired difference of per-unit averages.
    assert paired_ratio_difference(a, b, torch.full((4,), 2.0)) == pytest.approx(
        paired_difference(a / 2, b / 2))
    delta, se = paired_ratio_difference(a, b, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert delta == pytest.approx(3.0 / 10.0)
    residual = torch.tensor([1.0, 0.0, 1.0, 1.0]) - 0.3 * torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert se == pytest.approx(float(residual.std()) / (2.5 * 2.0))
    with pytest.raises(ValueError, match="counts"):
        paired_ratio_difference(a, b, torch.tensor([1.0, 0.0, 1.0, 1.0]))


# rouge-score comes with the lab's text extra, which CI installs.
@pytest.mark.skipif(importlib.util.find_spec("rouge_score") is None, reason="rouge-score is not installed")
def test_rouge_l_is_the_lcs_f_measure_with_stemming():
    from pyro_dlf_bench.metrics import rouge_l

    # "the cat run fast" (stemmed) vs "the cat were run fast": LCS 4, recall 4/4, precision 4/5.
    scores = rouge_l(["the cats were running fast", "", "A b"], ["the cat runs fast", "x", "a B"])
    assert scores.tolist() == pytest.approx([2 * 0.8 * 1.0 / 1.8, 0.0, 1.0])
    with pytest.raises(ValueError, match="equal length"):
        rouge_l(["a"], ["a", "b"])


def _tiny_run(tmp_path, student_seed: int, **overrides):
    from pyro_dlf_bench.harness.seqkd import SeqKDConfig, run_seqkd_benchmark

    def encode(text):  # a deterministic word hash (no tokenizer files needed)
        return [zlib.crc32(word.encode()) % 125 + 3 for word in text.split()]

    settings = dict(data_dir=str(SHARED_TEXT.parent), prefix_tokens=4, continuation_tokens=6, train_prefixes=32,
                    eval_prefixes=16, eval_reviews=20, review_tokens=12, student_layers=2, pre_distill_reviews=24,
                    pre_distill_epochs=2, epochs=2, warmup_steps=2, batch_size=8, top_k=8, student_seed=student_seed,
                    cache_dir=str(tmp_path / "cache"), progress=False, command=f"test {student_seed}")
    config = SeqKDConfig(**{**settings, **overrides})
    return run_seqkd_benchmark(config, teacher=_tiny_llama(), encode=encode, eos_token_id=1)


@pytest.mark.data
@needs_extra
def test_tiny_decoder_runs_the_published_protocol_and_the_report_merges_seeds(tmp_path):
    """Teacher samples → pre-distillation → one student per objective from it (and from the cold start) → metrics →
    per-seed reports → merged over seeds with paired standard errors."""
    from pyro_dlf_bench.harness.seqkd_report import merge_seqkd_results, summarise_seqkd, write_seqkd_report
    from pyro_dlf_bench.harness.seqkd_training import OBJECTIVES

    if SHARED_TEXT is None:  # a clean clone has no corpus: say why nothing ran
        pytest.skip(shared_data.missing_reason("text"))
    result = _tiny_run(tmp_path, 0)
    run = result["runs"][0]
    rows = {row["method"]: row for row in run["rows"]}
    assert list(rows) == ["teacher", "layer-copied, untrained", "pre-distilled", *OBJECTIVES]
    assert result["data"]["student_layers"] == [0, 3]
    assert {rows[o]["start"] for o in OBJECTIVES} == {"pre-distilled"}
    for row in rows.values():
        assert len(row["review_nll"]) == result["data"]["eval_reviews"] and len(row["rouge_l"]) == 16
        assert all(v >= 0 for v in row["forward_kl"]) and 0 < row["distinct_1"] <= 1
    # Pre-distillation, then the forward KL along teacher samples, move the student towards the teacher.
    kl = {method: sum(row["forward_kl"]) for method, row in rows.items()}
    assert kl["forward KL"] < kl["pre-distilled"] < kl["layer-copied, untrained"]
    assert len(run["curves"]["pre-distillation"]) == 2 * 3 and all(len(run["curves"][o]) == 2 * 4 for o in OBJECTIVES)
    assert len(list((tmp_path / "cache").glob("seqkd_*.pt"))) == 2

    write_seqkd_report(result, str(tmp_path), "one")
    text = (tmp_path / "one.md").read_text()
    assert "| forward KL | " in text and "## Paired differences" in text and "one seed" in text
    assert (tmp_path / "one_curves.png").stat().st_size > 0

    first = json.loads(json.dumps(result))  # as read back from its file
    second = json.loads(json.dumps(_tiny_run(tmp_path, 1)))
    merged = merge_seqkd_results([second, first])
    assert [r["student_seed"] for r in merged["runs"]] == [0, 1]
    summary = summarise_seqkd(merged)
    mean, se = summary["methods"]["JS"]["perplexity"]
    assert se is not None and se >= 0 and math.isfinite(mean) and summary["methods"]["JS"]["seeds"] == 2
    delta, se = summary["paired"]["JS"]["forward_kl"]
    assert math.isfinite(delta) and se > 0
    write_seqkd_report(merged, str(tmp_path), "merged")
    assert "Student seeds: 0, 1; mean ± standard error" in (tmp_path / "merged.md").read_text()

    # The cold-start ablation: the same objectives from the layer-copied student, no pre-distillation.
    cold = json.loads(json.dumps(_tiny_run(tmp_path, 0, start="layer-copied")))
    rows = {row["method"]: row for row in cold["runs"][0]["rows"]}
    assert list(rows) == ["teacher", "layer-copied, untrained", *(f"{o}, cold start" for o in OBJECTIVES)]
    assert {rows[f"{o}, cold start"]["start"] for o in OBJECTIVES} == {"layer-copied, untrained"}
    write_seqkd_report(cold, str(tmp_path), "cold")
    assert "without pre-distillation" in (tmp_path / "cold.md").read_text()
    with pytest.raises(ValueError, match="differ in start"):
        merge_seqkd_results([first, cold])

    # The command line merges the files the runs wrote; a mistake is one line naming the inputs.
    from pyro_dlf.cli import main

    write_seqkd_report(second, str(tmp_path), "two")
    assert main(["bench", "report", str(tmp_path / "one.json"), str(tmp_path / "two.json"), "--output-dir",
                 str(tmp_path), "--name", "cli"]) == 0
    assert "Student seeds: 0, 1" in (tmp_path / "cli.md").read_text()
    assert main(["bench", "report", str(tmp_path / "one.json"), str(tmp_path / "cold.json"), "--output-dir",
                 str(tmp_path)]) == 2
    assert main(["bench", "report", str(tmp_path / "one.json"), str(tmp_path / "two.json"), "--methods", "DLF",
                 "--output-dir", str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="seed 0 appears twice"):
        merge_seqkd_results([first, first])
    with pytest.raises(ValueError, match="differ in epochs"):
        merge_seqkd_results([first, {**second, "config": {**second["config"], "epochs": 3}}])
