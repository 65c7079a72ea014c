//! Given/when/then fixtures for aggregates (to be completed).
