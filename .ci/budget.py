"""Print CI's wall time against its budget and the slowest test modules (a report, never a failure).

Usage: python .ci/budget.py STARTED_AT_EPOCH_S SECONDS_JSON [BUDGET_MIN]
SECONDS_JSON is what the tests' conftest writes with POLITUNE_TEST_SECONDS set: seconds per module.
"""

import json
import sys
import time
from pathlib import Path

started, seconds_file = float(sys.argv[1]), Path(sys.argv[2])
budget_min = float(sys.argv[3]) if len(sys.argv) > 3 else 45.0
wall_min = (time.time() - started) / 60
print(f"\n== CI wall time: {wall_min:.1f} min against a budget of {budget_min:.0f} min "
      f"({'within' if wall_min <= budget_min else 'OVER'} budget; hard limit 90) ==")
seconds = json.loads(seconds_file.read_text()) if seconds_file.is_file() else {}
print(f"tests: {sum(seconds.values()) / 60:.1f} min in {len(seconds)} modules; the ten slowest:")
for module, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:10]:
    print(f"  {s:7.0f} s  {module}")
