//! Runnable examples of mink.
//!
//! Start with the shop, which runs on a SQLite file with no setup:
//!
//! ```text
//! cargo run -p mink-examples --bin shop
//! ```
//!
//! Its code is in [`shop`]: two aggregates, a command service, and the scenario the
//! binary narrates. `tests/shop.rs` runs the same scenario and checks its outcome.

pub mod shop;

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The guide's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
pub struct GuideDoctests;
