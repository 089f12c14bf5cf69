from __future__ import annotations

import sys
from pathlib import Path

# factories.py and cluster.py (test helpers) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
