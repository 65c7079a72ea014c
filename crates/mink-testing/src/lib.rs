//! # mink-testing
//!
//! * [`conformance`]: the suite every store runs, in the style of object_store's
//!   exported tests. An adapter crate implements [`StoreFactory`] and calls
//!   [`conformance_tests!`] from one of its `tests/` files.
//! * [`fixture`]: given/when/then tests for aggregates.
//! * [`services`]: how tests that need a server find it, skip loudly, or fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod command_stores;
pub mod conformance;
pub mod evolution;
pub mod fixture;
pub mod outbox;
pub mod services;

pub use conformance::StoreFactory;
pub use fixture::AggregateFixture;
