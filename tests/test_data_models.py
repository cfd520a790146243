"""Benchmarks, languages, prompts, model loading and the reference rollout engine, on real tiny parts."""

from __future__ import annotations

import pytest
import torch

from copsd.data.benchmarks import benchmarks, get_benchmark, load_problems
from copsd.data.languages import canonical_code, get_language, registry
from copsd.errors import CopsdError, DataError, ModelLoadError
from copsd.models import load_model, load_tokenizer
from copsd.models.builtin import QWEN3_STYLE_TEMPLATE
from copsd.prompts import has_thinking_tokens, student_prompt
from copsd.rollout import SamplingParams, generate


def test_language_registry_covers_afrimgsm_and_aliases():
    reg = registry()
    afrimgsm = get_benchmark("afrimgsm").languages
    assert len(afrimgsm) == 19 and {"swa", "vai", "zul", "eng", "fra"} <= set(afrimgsm)
    for code in afrimgsm:
        assert code in reg and "\\boxed{}" in reg[code].instruction, code
    assert canonical_code("SW") == "swa" and canonical_code("zh") == "zho"
    with pytest.raises(CopsdError, match="unknown language 'klingon'"):
        canonical_code("klingon")


def test_benchmark_table_drives_validation_and_a_plugin_adds_to_it():
    """The table (resources/benchmarks.yaml) and the testbed plugin's benchmark are one registry."""
    from copsd.config import JobConfig

    table = benchmarks()
    assert list(table)[:4] == ["afrimgsm", "mgsm", "polymath", "gsm8k"] and "testbed" in table
    assert table["polymath"].splits == ("low", "medium", "high", "top")
    assert (
        JobConfig(method="base", model="m", language="synlo", eval={"benchmark": "testbed"}).eval.benchmark == "testbed"
    )
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'; allowed: afrimgsm, mgsm"):
        JobConfig(method="base", model="m", language="swa", eval={"benchmark": "mmlu"})
    with pytest.raises(ValueError, match="benchmark 'mgsm' has no language 'hau'"):
        JobConfig(method="base", model="m", language="hau", eval={"benchmark": "mgsm"})


def test_language_override_file(tmp_path, monkeypatch):
    f = tmp_path / "extra.yaml"
    f.write_text(
        "swa:\n  thinking: 'Nitafikiri kwa Kiswahili.'\nxyz:\n  name: Test\n  instruction: 'do \\boxed{}'\n  thinking: 't'\n"
    )
    monkeypatch.setenv("COPSD_LANGUAGES", str(f))
    assert get_language("swa").thinking == "Nitafikiri kwa Kiswahili."
    assert get_language("swa").name == "Swahili"
    assert get_language("xyz").name == "Test"


@pytest.mark.parametrize(
    "bench, lang, split, n, first_answer, first_id",
    [
        ("mgsm", "swa", "test", 250, "18", "mgsm-swa-0"),
        ("mgsm", "eng", "test", 250, "18", "mgsm-eng-0"),
        ("gsm8k", "eng", "test", 1319, "18", "gsm8k-0"),
        ("polymath", "swa", "low", 125, "18", None),
        ("polymath", "tel", "medium", 125, None, None),
    ],
)
def test_bundled_benchmarks(bench, lang, split, n, first_answer, first_id):
    probs = load_problems(bench, lang, split)
    assert len(probs) == n and len({p.id for p in probs}) == n
    if first_answer:
        assert probs[0].answer == first_answer
    if first_id:
        assert probs[0].id == first_id
    assert load_problems(bench, lang, split, limit=3) == probs[:3]


def test_afrimgsm_local_dir_and_errors(tmp_path):
    d = tmp_path / "afrimgsm" / "swa"
    d.mkdir(parents=True)
    quoted = 'Alisema "habari" mara 3, kisha "asante" mara 4. Ni mara ngapi?'
    (d / "test.tsv").write_text(
        f"question\tanswer_number\nNi ngapi 2+2?\t4\nNa 1,000 + 1?\t1,001\n{quoted}\t7\n", encoding="utf-8"
    )
    probs = load_problems("afrimgsm", "swa", "test", data_dir=str(tmp_path / "afrimgsm"))
    assert [p.answer for p in probs] == ["4", "1,001", "7"]
    assert [p.id for p in probs] == ["afrimgsm-swa-test-0", "afrimgsm-swa-test-1", "afrimgsm-swa-test-2"]
    assert probs[2].question == quoted  # quotes are text (pandas' default quoting would eat them)
    with pytest.raises(DataError, match="does not exist"):
        load_problems("afrimgsm", "swa", data_dir=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="dev.tsv not found"):
        load_problems("afrimgsm", "swa", "dev", data_dir=str(tmp_path / "afrimgsm"))
    (d / "dev.tsv").write_text("q\ta\nx\t1\n")
    with pytest.raises(DataError, match="needs columns 'question'"):
        load_problems("afrimgsm", "swa", "dev", data_dir=str(tmp_path / "afrimgsm"))


def test_afrimgsm_unreachable_hub_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as ei:
        load_problems("afrimgsm", "hau")
    msg = str(ei.value)
    assert "masakhane/afrimgsm" in msg and "COPSD_AFRIMGSM_DIR" in msg and "\n" not in msg


def test_language_not_in_benchmark():
    with pytest.raises(CopsdError, match="has no language 'amh'"):
        load_problems("mgsm", "amh")


def test_builtin_model_is_real_qwen3_with_thinking_template(tiny_model):
    from transformers import Qwen3ForCausalLM

    assert isinstance(tiny_model.model, Qwen3ForCausalLM)
    assert has_thinking_tokens(tiny_model.tokenizer)


def test_student_prompt_thinking_and_not(tiny_model):
    tok = tiny_model.tokenizer
    swa = get_language("swa")
    p = student_prompt(tok, "Swali?", "swa", thinking=True)
    assert p.startswith("<|im_start|>user\nSwali?\n\n" + swa.instruction + "<|im_end|>\n")
    assert p.endswith("<|im_start|>assistant\n<think>\n" + swa.thinking)
    q = student_prompt(tok, "Swali?", "swa", thinking=False)
    assert q.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_template_without_thinking_tokens_falls_back(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model.source)
    tok.chat_template = QWEN3_STYLE_TEMPLATE.replace("<think>", "").replace("</think>", "")
    tok.chat_template = tok.chat_template.replace("enable_thinking is defined and enable_thinking is false", "false")
    assert not has_thinking_tokens(tok)
    p = student_prompt(tok, "Q?", "eng")
    assert p.endswith("<|im_start|>assistant\n") and "By request" not in p
    tok.chat_template = None
    assert student_prompt(tok, "Q?", "eng") == "Q?\n\n" + get_language("eng").instruction + "\n\n"


def test_model_load_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "missing-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as ei:
        load_tokenizer("Qwen/Qwen3-1.7B")
    assert "Hub is unreachable" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(ModelLoadError, match="unknown built-in"):
        load_model("builtin:gpt-17")


def test_rollouts_are_reproducible_and_stop_at_eos(tiny_model):
    m, tok = tiny_model.model, tiny_model.tokenizer
    prompts = [student_prompt(tok, q, "eng") for q in ("One?", "A longer question with more words?")]
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=12)
    a = generate(m, tok, prompts, params, batch_size=4, seed=7)
    b = generate(m, tok, prompts, params, batch_size=4, seed=7)
    c = generate(m, tok, prompts, params, batch_size=4, seed=8)
    assert [[r.token_ids for r in g] for g in a] == [[r.token_ids for r in g] for g in b]
    assert [[r.token_ids for r in g] for g in a] != [[r.token_ids for r in g] for g in c]
    assert [len(g) for g in a] == [3, 3]
    from copsd.rollout import stop_token_ids

    stops = stop_token_ids(tok, m)
    for g in a:
        for r in g:
            if r.finished:
                assert r.token_ids[-1] in stops and not any(t in stops for t in r.token_ids[:-1])
            else:
                assert len(r.token_ids) == 12 and not any(t in stops for t in r.token_ids)


def test_left_padded_batch_equals_one_by_one_greedy(tiny_model):
    m, tok = tiny_model.model, tiny_model.tokenizer
    prompts = [student_prompt(tok, q, "swa") for q in ("Moja?", "Swali refu zaidi lenye maneno mengi sana?", "Tatu")]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=10)
    batched = generate(m, tok, prompts, params, batch_size=8)
    single = [generate(m, tok, [p], params, batch_size=1)[0] for p in prompts]
    assert [g[0].token_ids for g in batched] == [g[0].token_ids for g in single]


def test_greedy_rollout_matches_a_manual_argmax_loop(tiny_model):
    m, tok = tiny_model.model, tiny_model.tokenizer
    prompt = student_prompt(tok, "What is 2+2?", "eng")
    [[r]] = generate(m, tok, [prompt], SamplingParams(n=1, temperature=0.0, max_new_tokens=8), seed=0)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    out = []
    with torch.no_grad():
        for _ in range(8):
            nxt = int(m(ids).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert r.token_ids == out
