"""`make typecheck`: mypy on the package, against a baseline of errors that may only shrink.

    python scripts/mypy_baseline.py            # fail on any error not in the baseline
    python scripts/mypy_baseline.py --update   # after fixing some: write the smaller baseline

Errors are compared without line numbers (file, message, code), so unrelated edits do not
move them; a new error anywhere fails, and fixing one asks for the baseline to be rewritten.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "scripts" / "mypy_baseline.txt"
LINE = re.compile(r"^(?P<path>[^:\s]+\.py):\d+(?::\d+)?: error: (?P<msg>.*)$")


def current() -> Counter[str]:
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode not in (0, 1):  # 2 = mypy itself failed (bad config, crash)
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(2)
    errors = Counter()
    for line in out.stdout.splitlines():
        m = LINE.match(line)
        if m:
            errors[f"{m['path']}: {m['msg']}"] += 1
    return errors


def main() -> int:
    now = current()
    if "--update" in sys.argv:
        BASELINE.write_text("".join(f"{e}\n" for e in sorted(now.elements())), encoding="utf-8")
        print(f"baseline: {sum(now.values())} errors written to {BASELINE.relative_to(ROOT)}")
        return 0
    base = Counter(BASELINE.read_text(encoding="utf-8").splitlines()) if BASELINE.is_file() else Counter()
    new = now - base
    if new:
        print(f"mypy: {sum(new.values())} error(s) not in the baseline:")
        for e in sorted(new.elements()):
            print(f"  {e}")
        return 1
    fixed = base - now
    note = f"; {sum(fixed.values())} fixed: run `python scripts/mypy_baseline.py --update`" if fixed else ""
    print(f"mypy: no new errors ({sum(now.values())} in the baseline{note})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
