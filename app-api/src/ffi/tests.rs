//! Unit tests of the ABI conversions, both directions.
