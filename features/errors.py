"""Errors raised by the data layer.

TailorDataError            base: anything wrong with input data or its description
├── MappingError           a column mapping or preset is invalid or names missing columns
├── SchemaError            a required column is missing or has the wrong type
└── DataValidationError    rows break the contract (strict mode); names column and first rows
"""

from __future__ import annotations


class TailorDataError(ValueError):
    """Base class for data errors. Messages name the file, column and first offending rows."""


class MappingError(TailorDataError):
    """A mapping file, preset or CLI mapping option is invalid."""


class SchemaError(TailorDataError):
    """A required column is missing or cannot be converted to its contract type."""


class DataValidationError(TailorDataError):
    """Rows break the event/catalogue/user contract and strict validation was requested."""
