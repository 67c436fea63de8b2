import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_decision_core_imports_no_django():
    """``risk.engine`` and what it reuses from ``trading`` load in a bare interpreter without Django."""
    script = (
        "import sys, risk.engine, trading.matching, trading.brokers.base, trading.fees;"
        "loaded = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'));"
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
