"""How `copsd speed` shows its results: each row on stderr as it comes, then a table of the rows
(and, with --out, the whole result as JSON)."""

from __future__ import annotations

import json
from pathlib import Path

from copsd.cli.common import console, err_console


def show(row) -> None:
    err_console.print(row, highlight=False)


def finish(result: dict, out: Path | None, columns: str) -> None:
    """Write `result` as JSON to `out` (if given) and print its rows as a table of `columns`."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        err_console.print(f"wrote {out}")
    console.print(table(result["rows"], columns.split()))


HEADERS = {
    "forwards_per_step": "forwards",
    "step_s": "step s",
    "peak_gib": "peak GiB",
    "step_gib": "step GiB (peak - base)",
    "trace_s": "trace s",
    "estimate_gib": "estimate GiB",
    "max_tokens": "token cap",
    "micro_batch": "micro-batch",
    "checkpointing": "checkpointing",
    "new_tokens": "new tok",
    "tokens_per_s": "tok/s",
    "ms_per_step": "ms/step",
    "bandwidth_share": "bw share",
    "peak_memory_gib": "peak GiB",
    "speedup_vs_hf": "x hf",
    "speedup_vs_static": "x static",
    "speedup_vs_fast": "x fast",
    "useful_tokens_per_s": "useful tok/s",
    "workload_s": "workload s",
    "slot_utilization": "slot use",
    "sequences": "seqs",
    "loss_step_s": "loss step s",
    "step_s_with_fast_rollouts": "step s (fast)",
    "step_s_with_hf_rollouts": "step s (hf)",
}


def table(rows: list[dict], cols: list[str]):
    from rich.table import Table

    optional = ("speedup_vs_fast",)  # only when a row compares a lever with plain fast
    cols = [c for c in cols if c not in optional or any(c in r for r in rows)]
    table = Table(*[HEADERS.get(c, c) for c in cols])
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, r.get("error", "") if c == cols[-1] else "")
            big = isinstance(v, float) and abs(v) >= 1000
            cells.append(f"{v:,.0f}" if big else f"{v:.3g}" if isinstance(v, float) else "-" if v is None else str(v))
        table.add_row(*cells)
    return table
