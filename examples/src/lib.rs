//! Runnable examples of mink.
//!
//! Start with the shop, which runs on a SQLite file with no setup:
//!
//! ```text
//! cargo run -p mink-examples --bin shop
//! ```
//!
//! Its code is in [`shop`]: two aggregates, their commands, a command bus with mink's
//! middleware, a transactional outbox delivering signed webhooks to a receiver in the
//! same process ([`shop::webhooks`]), and the scenario the binary narrates.
//! `tests/shop.rs` runs the same scenario and checks its outcome.
//!
//! Then [`observability`] watches the same bus: Prometheus metrics over HTTP and
//! OpenTelemetry traces whose context reaches the stored events:
//!
//! ```text
//! cargo run -p mink-examples --bin observability            # prints metrics and spans
//! cargo run -p mink-examples --bin observability -- --serve # keeps /metrics up
//! ```
//!
//! `tests/observability.rs` scrapes the endpoint and reads the exported spans.

pub mod observability;
pub mod shop;

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The guide's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
pub struct GuideDoctests;
