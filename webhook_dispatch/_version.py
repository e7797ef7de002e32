"""The package version, in one place (read by hatchling and the user-agent)."""

__version__ = "0.1.0"
