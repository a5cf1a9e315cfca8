"""Shared by every scenario's testinfra verify step: molecule/shared/ holds the helpers."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "shared"))
