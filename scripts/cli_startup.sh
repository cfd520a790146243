#!/usr/bin/env bash
# CLI start-up time before/after a change: bash scripts/cli_startup.sh OLD_TREE NEW_TREE (e.g. a
# `git worktree add /tmp/old <rev>` and this checkout); docs/benchmarks.md records the output.
# median of 5 wall times of a CLI command from each tree (PYTHONPATH picks the tree's copsd)
med() { local tree=$1; shift; for i in 1 2 3 4 5; do /usr/bin/time -f "%e" env PYTHONPATH=$tree python $tree/cli.py "$@" >/dev/null 2>>/tmp/t.$$ ; tail -n1 /tmp/t.$$; done | sort -n | sed -n 3p; rm -f /tmp/t.$$; }
OLD=$(realpath "$1") NEW=$(realpath "$2")
for cmd in "--help" "eval -m builtin:tiny-qwen3 -l klingon -b mgsm --no-mlflow" "sweep plan demo --estimate" "report table --sweep nope"; do
  echo "$cmd | before $(med "$OLD" $cmd) s | after $(med "$NEW" $cmd) s"
done
