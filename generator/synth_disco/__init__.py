"""synth-disco: declarative recipes to versioned datasets of synthetic discussions."""

__version__ = "0.1.0"
