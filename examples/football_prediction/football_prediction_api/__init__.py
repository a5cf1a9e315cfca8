"""Football Prediction System API, packaged as a versioned release.

    python -m football_prediction_api --host H --port P --colour C --config-dir DIR
    python -m football_prediction_api --check-config --config-dir DIR

The release version is stamped into _version.py by scripts/build-release.sh.
"""
from ._version import __version__

__all__ = ["__version__"]
