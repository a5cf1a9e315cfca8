# Overwritten in the wheel by scripts/build-release.sh with the release's version.
__version__ = "0.0.0.dev0"
