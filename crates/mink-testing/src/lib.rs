//! # mink-testing
//!
//! * [`conformance`]: the suite every store runs, in the style of object_store's
//!   exported tests. An adapter crate implements [`StoreFactory`] and calls
//!   [`conformance_tests!`] from one of its `tests/` files.
//! * [`fixture`]: given/when/then tests for aggregates.
//! * [`services`]: how tests that need a server find it, skip loudly, or fail.
//! * [`readmodel`]: the suite every read-model store runs: an adapter implements
//!   [`readmodel::ReadModelFactory`] and calls [`readmodel_tests!`]:
//!   `mink_testing::readmodel_tests!(async { Some(MyFactory::new()) });`
//! * [`control`]: the suite every projection control store runs: an adapter
//!   implements [`control::ControlFactory`] and calls [`control_tests!`]:
//!   `mink_testing::control_tests!(async { Some(MyControlFactory::new()) });`

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod command_stores;
pub mod conformance;
pub mod control;
pub mod evolution;
pub mod fixture;
pub mod outbox;
pub mod readmodel;
pub mod rng;
pub mod services;

pub use conformance::StoreFactory;
pub use fixture::AggregateFixture;
