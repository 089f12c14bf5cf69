from __future__ import annotations

import sys
from pathlib import Path

# fleet.py (the integration helpers) lives beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
