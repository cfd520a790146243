"""The `fast` rollout engine against the `hf` reference, on a tiny real Qwen3 on CPU."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from copsd.rollout import SamplingParams, fast, generate, hf, resolve_engine, sampling

PROMPTS = [
    "Question: what is 2+3? Answer:",
    "hello",
    "The quick brown fox jumps over the lazy dog " * 3,
    "a b c",
    "Swali: 7 x 6 ni ngapi?",
]


@pytest.fixture(scope="module")
def lora_model(tiny_model):
    """The tiny model with LoRA adapters whose B is non-zero, so the adapters change the output."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        copy.deepcopy(tiny_model.model),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    model.eval()
    return model


def _ids(tok, prompts):
    return [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]


def test_greedy_equals_hf_token_for_token(tiny_model, monkeypatch):
    monkeypatch.setattr(fast.layout, "BUCKET", 16)  # cross several cache buckets in 60 tokens
    params = SamplingParams(n=2, temperature=0, max_new_tokens=60)
    model, tok = tiny_model.model, tiny_model.tokenizer
    for batch_size in (3, 10):  # a smaller last batch (padded rows) and one batch
        a = generate(model, tok, PROMPTS, params, batch_size=batch_size, engine="hf")
        b = generate(model, tok, PROMPTS, params, batch_size=batch_size, engine="fast")
        assert [[r.token_ids for r in g] for g in a] == [[r.token_ids for r in g] for g in b]
        assert [[r.text for r in g] for g in a] == [[r.text for r in g] for g in b]


def test_greedy_with_lora_and_disabled_adapters(lora_model, tiny_model):
    tok = tiny_model.tokenizer
    params = SamplingParams(temperature=0, max_new_tokens=30)
    ids = _ids(tok, PROMPTS)
    with_lora = fast.generate_ids(lora_model, ids, params, [], tok.pad_token_id, seed=0)
    assert with_lora == hf.generate_ids(lora_model, ids, params, [], tok.pad_token_id, seed=0)
    with lora_model.disable_adapter():
        base = fast.generate_ids(lora_model, ids, params, [], tok.pad_token_id, seed=0)
        assert base == hf.generate_ids(lora_model, ids, params, [], tok.pad_token_id, seed=0)
    assert base == fast.generate_ids(tiny_model.model, ids, params, [], tok.pad_token_id, seed=0)
    assert base != with_lora  # the adapters were applied
    # in-place updates of the adapter weights (what the optimizer does) are seen by the engine
    with torch.no_grad():
        saved = {n: p.clone() for n, p in lora_model.named_parameters() if "lora_B" in n}
        for n, p in lora_model.named_parameters():
            if "lora_B" in n:
                p.zero_()
    try:
        assert fast.generate_ids(lora_model, ids, params, [], tok.pad_token_id, seed=0) == base
    finally:
        with torch.no_grad():
            for n, p in lora_model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])


def test_rows_stop_at_their_own_stop_token(tiny_model):
    tok, model = tiny_model.tokenizer, tiny_model.model
    params = SamplingParams(temperature=0, max_new_tokens=40)
    ids = _ids(tok, PROMPTS)
    free = hf.generate_ids(model, ids, params, [], tok.pad_token_id, seed=0)
    stop = free[0][5]  # a token row 0 emits at step 5 (and other rows maybe elsewhere or never)
    pad = tok.pad_token_id
    a = hf.generate_ids(model, ids, params, [stop], pad, seed=0)
    b = fast.generate_ids(model, ids, params, [stop], pad, seed=0)
    for ra, rb, rf in zip(a, b, free):
        cut = rf.index(stop) if stop in rf else None
        if cut is None:
            assert rb == rf
        else:  # identical up to the stop token, padding afterwards
            assert rb[: cut + 1] == rf[: cut + 1] and set(rb[cut + 1 :]) <= {pad}
        assert rb[: len(ra)] == ra and set(rb[len(ra) :]) <= {pad}  # hf stops once every row has
    assert any(set(rb[rb.index(stop) + 1 :]) == {pad} for rb in b if stop in rb[:-1])  # some row stopped early


def _reference_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """transformers' own warpers (temperature -> top-k -> top-p), as a distribution."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    x = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        x = TopKLogitsWarper(top_k)(None, x)
    x = TopPLogitsWarper(top_p)(None, x)
    return torch.softmax(x, -1)


@pytest.mark.parametrize(
    "top_k, top_p, search", [(20, 0.95, False), (0, 0.95, False), (0, 1.0, False), (0, 0.95, True)]
)
def test_sampling_follows_the_reference_distribution(top_k, top_p, search):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 400, generator=g) * 2.0
    expected = _reference_probs(logits, 1.1, top_k, top_p)[0]
    torch.manual_seed(1)
    n = 40_000
    draws = sampling.sample_next(logits.expand(n, -1).contiguous(), 1.1, top_k, top_p, search)
    counts = torch.bincount(draws, minlength=400).double()
    support = expected > 0
    assert counts[~support].sum() == 0  # never a token the reference filters out
    exp = expected[support].double() * n
    chi2 = float(((counts[support] - exp) ** 2 / exp).sum())
    dof = int(support.sum()) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5, (chi2, dof)  # ~5 sigma above the chi-square mean


def test_sampled_rollouts_match_hf_in_distribution(tiny_model):
    """First-token histograms of 1,500 sampled rollouts from each engine agree (two-sample chi-square)."""
    model, tok = tiny_model.model, tiny_model.tokenizer
    params = SamplingParams(n=1500, temperature=1.1, top_k=20, top_p=0.95, max_new_tokens=2)
    a = generate(model, tok, ["hello"], params, batch_size=500, seed=3, engine="hf")[0]
    b = generate(model, tok, ["hello"], params, batch_size=500, seed=3, engine="fast")[0]
    ca = torch.bincount(torch.tensor([r.token_ids[0] for r in a]), minlength=len(tok)).double()
    cb = torch.bincount(torch.tensor([r.token_ids[0] for r in b]), minlength=len(tok)).double()
    seen = (ca + cb) > 0
    ca, cb = ca[seen], cb[seen]
    assert 2 < len(ca) <= 20  # top-k 20 bounds the support
    chi2 = float(((ca - cb) ** 2 / (ca + cb)).sum())
    dof = len(ca) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5, (chi2, dof)
    again = generate(model, tok, ["hello"], params, batch_size=500, seed=3, engine="fast")[0]
    assert [r.token_ids for r in again] == [r.token_ids for r in b]  # seeded: reproducible


def test_auto_engine_falls_back_on_cpu_with_a_note(tiny_model, capsys):
    model = tiny_model.model
    from copsd.rollout import engine_note

    assert resolve_engine("auto", model) == "hf"
    assert capsys.readouterr().err == ""  # the engine says nothing itself: a job's recorder says the note once
    note = engine_note("auto", model)
    assert note is not None and note.startswith("note: rollout engine 'hf'") and "GPU" in note
    assert engine_note("hf", model) is None
    assert resolve_engine("fast", model) == "fast"
    with pytest.raises(ValueError, match="unknown rollout engine 'vlm'"):
        resolve_engine("vlm", model)


def test_engine_is_freed_with_its_model(tiny_model):
    import gc
    import weakref

    model = copy.deepcopy(tiny_model.model)
    fast.generate_ids(model, [[5, 6, 7]], SamplingParams(temperature=0, max_new_tokens=3), [], 0, seed=0)
    ref = weakref.ref(fast.engine_for(model))
    assert copy.deepcopy(model).__dict__.get("_copsd_fast_engine") is None  # copies make their own
    gc.disable()  # freed by reference counting alone, not by a later cycle collection
    try:
        del model
        assert ref() is None
    finally:
        gc.enable()


def test_engine_follows_a_model_moved_to_another_dtype(tiny_model):
    model = copy.deepcopy(tiny_model.model)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    ids = _ids(tiny_model.tokenizer, PROMPTS[:2])
    fast.generate_ids(model, ids, params, [], 0, seed=0)
    model.to(torch.float64)
    assert fast.generate_ids(model, ids, params, [], 0, seed=0) == hf.generate_ids(model, ids, params, [], 0, seed=0)
    assert fast.engine_for(model).state.k[0].dtype == torch.float64


def test_lora_on_some_projections_only(tiny_model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(
        copy.deepcopy(tiny_model.model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    model.eval()
    params = SamplingParams(temperature=0, max_new_tokens=20)
    ids = _ids(tiny_model.tokenizer, PROMPTS)
    assert fast.generate_ids(model, ids, params, [], 0, seed=0) == hf.generate_ids(model, ids, params, [], 0, seed=0)


def test_samples_depend_on_seed_and_rows_not_on_history(tiny_model):
    model = copy.deepcopy(tiny_model.model)
    params = SamplingParams(temperature=1.1, top_k=20, top_p=0.95, max_new_tokens=12)
    ids = _ids(tiny_model.tokenizer, PROMPTS)
    first = fast.generate_ids(model, ids[:3], params, [], 0, seed=4, rows=4)
    fast.generate_ids(model, ids * 3, params, [], 0, seed=9)  # a bigger batch in between
    assert fast.generate_ids(model, ids[:3], params, [], 0, seed=4, rows=4) == first
    assert fast.engine_for(model).state.batch == 4


def test_hf_reference_ignores_the_checkpoints_own_generation_defaults(tiny_model):
    model = copy.deepcopy(tiny_model.model)
    model.generation_config.repetition_penalty = 3.0  # as a checkpoint's generation_config.json may say
    params = SamplingParams(temperature=0, max_new_tokens=20)
    ids = _ids(tiny_model.tokenizer, PROMPTS)
    assert hf.generate_ids(model, ids, params, [], 0, seed=0) == fast.generate_ids(model, ids, params, [], 0, seed=0)
    assert model.generation_config.repetition_penalty == 3.0  # restored


def test_unsupported_models_are_named():
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen3Config, Qwen3ForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    assert "gpt2" in fast.unsupported_reason(gpt2)
    cfg = Qwen3Config(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        rope_scaling={"rope_type": "dynamic", "factor": 2.0},
    )
    assert "dynamic" in fast.unsupported_reason(Qwen3ForCausalLM(cfg))
    with pytest.raises(ValueError, match="cannot run this model"):
        resolve_engine("fast", gpt2)


def _alone(model, ids, params, stops, pad):
    """Each sequence decoded by itself with transformers `generate` (through its stop token)."""
    out = []
    for p in ids:
        row = hf.generate_ids(model, [p], params, stops, pad, seed=0)[0]
        cut = next((k for k, t in enumerate(row) if t in stops), None)
        out.append(row if cut is None else row[: cut + 1])
    return out


def test_refilled_slots_equal_each_sequence_decoded_alone(monkeypatch):
    """Continuous batching: 3 slots, 12 real prompts whose answers stop at different lengths (the
    shipped testbed model); a slot whose sequence stopped takes the next (prefilled into that
    slot, at its own positions) and every sequence equals its greedy decode alone; refilling
    needs fewer decode steps than static waves."""
    from copsd.data.benchmarks import load_problems
    from copsd.models.load import load_model
    from copsd.prompts import student_prompt
    from copsd.rollout import stop_token_ids

    monkeypatch.setattr(fast.layout, "BUCKET", 16)
    monkeypatch.setattr(fast.scheduler, "CHECK_EVERY", 4)
    lm = load_model("builtin:testbed")
    tok = lm.tokenizer
    probs = load_problems("testbed", "synlo", limit=6) + load_problems("testbed", "eng", limit=6)
    ids = _ids(tok, [student_prompt(tok, p.question, "synlo", thinking=False) for p in probs])
    params = SamplingParams(temperature=0, max_new_tokens=40)
    stops, pad = stop_token_ids(tok, lm.model), tok.pad_token_id
    alone = _alone(lm.model, ids, params, stops, pad)
    assert len({len(r) for r in alone}) >= 3  # the sequences really end at different lengths
    eng = fast.engine_for(lm.model)
    cont = eng.run(ids, list(range(len(ids))), params, stops, pad, seed=0, slots=3)
    steps_cont = eng.last_timing["decode_steps"]
    assert cont == alone
    assert eng.last_timing["useful_tokens"] == sum(map(len, alone))
    static = eng.run(ids, list(range(len(ids))), params, stops, pad, seed=0, slots=3, refill=False)
    assert static == alone
    assert steps_cont < eng.last_timing["decode_steps"]


def test_shared_prompt_is_prefilled_once(tiny_model, lora_model):
    """n samples of a prompt: one prefill, the other slots copy its cache (or keep it when a slot
    that held the prompt takes its next sample); greedy samples all equal the decode alone."""
    tok = tiny_model.tokenizer
    params = SamplingParams(temperature=0, max_new_tokens=24)
    ids = _ids(tok, PROMPTS)
    alone = _alone(lora_model, ids, params, [], 0)
    eng = fast.engine_for(lora_model)
    seqs = [p for p in range(len(ids)) for _ in range(4)]  # 4 samples each, adjacent
    for slots in (3, 8, 20):
        out = eng.run(ids, seqs, params, [], 0, seed=0, slots=slots)
        assert out == [alone[p] for p in seqs]
        assert eng.last_timing["prefilled_prompts"] == len(ids)
    assert eng.run(ids, seqs, params, [], 0, seed=0, slots=8, share=False) == out
    assert eng.last_timing["prefilled_prompts"] == len(seqs)
    # per-sequence budgets (what the workload benchmark uses to end rows at drawn lengths)
    limits = [1 + 5 * (k % 5) for k in range(len(seqs))]
    cut = eng.run(ids, seqs, params, [], 0, seed=0, slots=8, limits=limits)
    assert cut == [alone[p][:n] for p, n in zip(seqs, limits)]


def test_continuous_sampling_is_seeded(tiny_model):
    model = copy.deepcopy(tiny_model.model)
    ids = _ids(tiny_model.tokenizer, PROMPTS)
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=30)
    stop = hf.generate_ids(model, ids[:1], SamplingParams(temperature=0, max_new_tokens=4), [], 0, 0)[0][1]
    eng = fast.engine_for(model)
    seqs = [p for p in range(len(ids)) for _ in range(3)]
    a = eng.run(ids, seqs, params, [stop], 0, seed=11, slots=4)
    eng.run(ids[:2], [0, 1], params, [stop], 0, seed=2, slots=7)  # another shape in between
    assert eng.run(ids, seqs, params, [stop], 0, seed=11, slots=4) == a
    assert eng.run(ids, seqs, params, [stop], 0, seed=12, slots=4) != a
    assert all(r[-1] == stop or len(r) == 30 for r in a)  # each through its stop token or the budget


# ---- step-level levers (EngineOptions): each must decode the same tokens as the plain engine ----


def test_top_p_search_keeps_exactly_what_the_sort_keeps():
    """The threshold search, a full sort and transformers' TopPLogitsWarper keep the tokens an
    fp64 sort keeps, row by row, from near-uniform rows (thousands kept) to peaked ones (one or
    two). Exempt: tokens whose mass above them is within 1e-5 of top_p, where fp32 rounding (the
    CPU's exp and summation order) decides for every implementation; they are counted, and few."""
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    unclear_total = 0
    for scale in (0.3, 2.0, 5.0, 12.0):
        logits = torch.randn(32, 6000, generator=g) * scale
        probs = torch.softmax(logits, -1)
        by_search = probs.view(torch.int32) >= sampling.top_p_floor(probs, 0.95)[:, None]
        vals, idx = probs.sort(-1, descending=True)
        by_sort = torch.zeros_like(by_search).scatter(-1, idx, (vals.cumsum(-1) - vals) < 0.95)
        by_hf = TopPLogitsWarper(0.95)(None, logits.clone()) > float("-inf")
        vals64 = vals.double()
        above = vals64.cumsum(-1) - vals64  # the mass sorted before each token, in fp64
        reference = torch.zeros_like(by_search).scatter(-1, idx, above < 0.95)
        unclear = torch.zeros_like(by_search).scatter(-1, idx, (above - 0.95).abs() < 1e-5)
        for kept in (by_search, by_sort, by_hf):
            assert torch.equal(kept & ~unclear, reference & ~unclear), scale
        unclear_total += int(unclear.sum())
    assert unclear_total <= 64, unclear_total  # of ~100,000 tokens kept
    # the cut is exact to the last bit: a token one ulp below the kept one at the cut is dropped
    b = torch.tensor(0.35)
    probs = torch.stack([torch.tensor(0.6), b, torch.nextafter(b, torch.tensor(0.0)), torch.tensor(0.01)])[None]
    assert (probs.view(torch.int32) >= sampling.top_p_floor(probs, 0.9)[:, None]).tolist() == [
        [True, True, False, False]
    ]
    # ties at the cut are kept together: 40 equal tokens, 0.95 of the mass reached inside them
    probs = torch.full((1, 40), 1 / 40)
    assert int((probs.view(torch.int32) >= sampling.top_p_floor(probs, 0.95)[:, None]).sum()) == 40


def _lora_copy(tiny_model, targets, alpha_pattern=None, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        copy.deepcopy(tiny_model.model),
        LoraConfig(r=4, lora_alpha=8, target_modules=targets, alpha_pattern=alpha_pattern or {}),
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize(
    "targets, alpha_pattern",
    [
        (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], None),
        (["q_proj", "v_proj", "up_proj"], {"v_proj": 32}),  # a zero block (k, gate) and unequal scales in a group
    ],
)
def test_fused_projections_decode_the_same_tokens(tiny_model, targets, alpha_pattern):
    model = _lora_copy(tiny_model, targets, alpha_pattern)
    ids = _ids(tiny_model.tokenizer, PROMPTS)
    params = SamplingParams(temperature=0, max_new_tokens=24)
    enc = tiny_model.tokenizer("a b c", return_tensors="pt")
    before = model(**enc).logits
    want = hf.generate_ids(model, ids, params, [], 0, seed=0)
    eng = fast.engine_for(model, fast.EngineOptions(fuse=True))
    assert eng.run([ids[0]], [0], params, [], 0, seed=0, slots=1)  # builds the fused groups
    attn = model.get_base_model().model.layers[0].self_attn
    q, k = (getattr(m, "base_layer", m).weight for m in (attn.q_proj, attn.k_proj))
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()  # one buffer, no copy kept
    assert torch.equal(model(**enc).logits, before)  # the model itself computes what it did
    assert eng.generate_ids(ids, params, [], 0, seed=0) == want
    # the engine keeps no reference to the buffer: a model moved elsewhere frees it
    from torch.multiprocessing.reductions import StorageWeakRef

    buffer = StorageWeakRef(q.untyped_storage())
    del q, k
    model.to(torch.float64)
    assert buffer.expired()
    assert eng.generate_ids(ids, params, [], 0, seed=0) == hf.generate_ids(model, ids, params, [], 0, seed=0)
    sampled = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=16)
    twin = copy.deepcopy(model)  # the engine holds its model weakly: keep it alive
    plain = fast.FastEngine(twin).generate_ids(ids, sampled, [], 0, seed=5)
    assert eng.generate_ids(ids, sampled, [], 0, seed=5) == plain  # same RNG stream, same logits
    with model.disable_adapter():
        assert eng.generate_ids(ids, params, [], 0, seed=0) == hf.generate_ids(model, ids, params, [], 0, seed=0)
    model.merge_adapter()  # peft adds B·A into the base weights in place: the fused buffer sees it
    try:
        assert eng.generate_ids(ids, params, [], 0, seed=0) == want
    finally:
        model.unmerge_adapter()
    assert eng.generate_ids(ids, params, [], 0, seed=0) == want


# inductor builds its CPU kernels with g++ (part of this image; a machine without one cannot compile)
NEEDS_CXX = pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs g++")


@pytest.mark.slow
@NEEDS_CXX
def test_compiled_step_decodes_what_the_eager_step_decodes(tiny_model):
    """torch.compile (inductor, on CPU here) of the decode step: the same greedy tokens, and with
    aten's random ops the same samples for a seed. About a minute: one compile per cache bucket."""
    model = _lora_copy(tiny_model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    ids = _ids(tiny_model.tokenizer, PROMPTS[:3])
    twins = [copy.deepcopy(model), copy.deepcopy(model)]  # engines hold their models weakly
    plain = fast.FastEngine(model)
    compiled = fast.FastEngine(twins[0], fast.EngineOptions(fuse=True, compile=True, search=True))
    greedy = SamplingParams(temperature=0, max_new_tokens=20)
    assert compiled.generate_ids(ids, greedy, [], 0, seed=0) == plain.generate_ids(ids, greedy, [], 0, seed=0)
    sampled = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=20)
    searched = fast.FastEngine(twins[1], fast.EngineOptions(fuse=True, search=True))
    assert compiled.generate_ids(ids, sampled, [], 0, seed=3) == searched.generate_ids(ids, sampled, [], 0, seed=3)


@pytest.mark.slow
@NEEDS_CXX
def test_flex_attention_reads_each_slot_up_to_its_own_position(tiny_model, monkeypatch):
    """FlexAttention over block-sparse per-slot views of the cache: the same greedy tokens as the
    plain engine, with slots refilled at other positions and 16-position blocks crossed."""
    monkeypatch.setattr(fast.layout, "BUCKET", 16)
    model = _lora_copy(tiny_model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    twin = copy.deepcopy(model)
    ids = _ids(tiny_model.tokenizer, PROMPTS)
    greedy = SamplingParams(temperature=0, max_new_tokens=40)
    seqs, limits = [0, 1, 2, 3, 4, 2, 0], [40, 7, 33, 12, 40, 5, 21]  # early stops: slots refill mid-run
    plain = fast.FastEngine(model).run(ids, seqs, greedy, [], 0, seed=0, slots=3, limits=limits)
    flex = fast.FastEngine(twin, fast.EngineOptions(flex=True)).run(
        ids, seqs, greedy, [], 0, seed=0, slots=3, limits=limits
    )
    assert flex == plain and [len(r) for r in flex] == limits
    monkeypatch.setattr(fast.layout, "BUCKET", 128)  # a decode that fits one block (inductor's CPU kernel needs two)
    short = SamplingParams(temperature=0, max_new_tokens=8)
    assert fast.FastEngine(twin, fast.EngineOptions(flex=True)).generate_ids(ids[:2], short, [], 0, seed=0) == (
        fast.FastEngine(model).generate_ids(ids[:2], short, [], 0, seed=0)
    )


def test_engine_options_are_named_as_benchmarks_name_them():
    assert fast.EngineOptions.parse("fast") == fast.EngineOptions()
    opts = fast.EngineOptions.parse("fast+search+fuse")
    assert (opts.fuse, opts.compile, opts.search) == (True, False, True)
    assert opts.label() == "fast+fuse+search"
    with pytest.raises(ValueError, match="fast with optional"):
        fast.EngineOptions.parse("fast+turbo")


def test_fused_projections_carry_biases():
    """Qwen2's q/k/v carry biases (Qwen3's do not): fused, they are one bias buffer too."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    base = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in base.model.layers:
            for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                m.bias.normal_(0, 0.5)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    ids = [[5, 9, 33, 7], [100, 200], [3] * 11]
    params = SamplingParams(temperature=0, max_new_tokens=20)
    want = hf.generate_ids(model, ids, params, [], 0, seed=0)
    eng = fast.engine_for(model, fast.EngineOptions(fuse=True))
    assert eng.generate_ids(ids, params, [], 0, seed=0) == want
    q = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    v = model.get_base_model().model.layers[0].self_attn.v_proj.base_layer
    assert q.bias.untyped_storage().data_ptr() == v.bias.untyped_storage().data_ptr()
