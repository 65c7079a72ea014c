//! The read-model and projection-control conformance suites on the in-memory
//! implementations, which are their reference semantics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mink_es::projection::memory::MemoryControl;
use mink_es::readmodel::MemoryReadModelStore;
use mink_testing::control::{ControlFactory, Controls};
use mink_testing::readmodel::ReadModelFactory;

struct MemoryReadModels;

impl ReadModelFactory for MemoryReadModels {
    type Store = MemoryReadModelStore;

    async fn create(&self) -> MemoryReadModelStore {
        MemoryReadModelStore::new()
    }
}

mod readmodels {
    mink_testing::readmodel_tests!(async { Some(super::MemoryReadModels) });
}

struct MemoryControls;

impl ControlFactory for MemoryControls {
    async fn create(&self) -> Controls {
        // Clones share their state: the second handle sees what the first writes.
        let control = MemoryControl::new();
        Controls::two(control.clone(), control)
    }
}

mod control {
    mink_testing::control_tests!(async { Some(super::MemoryControls) });
}

/// One handle only: the suite reads through the same handle it writes through.
struct SingleMemoryControl;

impl ControlFactory for SingleMemoryControl {
    async fn create(&self) -> Controls {
        Controls::one(MemoryControl::new())
    }
}

mod control_single_handle {
    mink_testing::control_tests!(async { Some(super::SingleMemoryControl) });
}
