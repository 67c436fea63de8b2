import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_hedge_core_and_its_replay_import_no_django():
    script = (
        "import sys, hedging.policy, hedging.replay;"
        "print(','.join(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
