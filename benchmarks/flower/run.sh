#!/usr/bin/env bash
# Flower against fedvlr-sim, timed in one run (see README.md here and docs/performance.md).
#
#   bash benchmarks/flower/run.sh                      # 1,000 and 5,000 users
#   bash benchmarks/flower/run.sh --users 50 --rounds 1 --out /tmp/flower-smoke   # a quick check
#
# Builds Flower's own environment (benchmarks/flower/.venv: flwr pins its own Ray) when it is
# missing or requirements.txt changed, then runs compare.py with fedvlr-sim's Python
# ($FEDVLR_PYTHON, else the repository's .venv, else python3). Arguments go to compare.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
stamp="$venv/.requirements.sha256"
wanted="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
    echo "building Flower's environment in $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
    echo "$wanted" > "$stamp"
fi

python="${FEDVLR_PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="python3"; fi
fi
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
exec "$python" "$here/compare.py" --flower-python "$venv/bin/python" "$@"
