"""Where the project and its test fixtures are."""

from __future__ import annotations

from pathlib import Path

# The project's root (tests/helpers/ is two levels down) and its folders.
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
