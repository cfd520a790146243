#!/usr/bin/env bash
# The wheels `copsd speed …` needs on the lent GPU machine and its image lacks (checked 2026-11-27
# against /work/.library/device/KINDS.md: pydantic and its three dependencies; the speed commands
# import nothing else that is missing there: `python -X importtime cli.py speed …` lists them).
# Run once here, in the repository root; then every device call carries `.whl` and
# scripts/gpu_session.sh installs them. The device runs Python 3.12 on x86_64.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for spec in pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$spec"
done
ls -la .whl
