"""paas: a multi-host process scheduler for the twelve-factor process model."""

__version__ = "0.1.0"
