"""Data: importers for public conversation formats, validation and stats, and SFT mixtures (DESIGN §3)."""

from .importers import CONVERTERS, FORMATS, ImportReport, convert
from .mix import build_mixture, load_recipe
from .oasst import threads

__all__ = ["convert", "CONVERTERS", "FORMATS", "ImportReport", "build_mixture", "load_recipe", "threads"]
