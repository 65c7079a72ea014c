//! The conformance suite: every store must pass all of it.
//!
//! ```ignore
//! // in an adapter crate's tests/conformance.rs
//! struct MyFactory;
//! impl mink_testing::StoreFactory for MyFactory { /* … */ }
//! mink_testing::conformance_tests!(async { Some(MyFactory) });
//! ```

use std::future::Future;

use mink_es::{CheckpointStore, EventStore, SnapshotStore, StreamId};

/// Makes fresh, isolated stores for the suite, and reaches behind them to simulate
/// corruption.
pub trait StoreFactory: Send + Sync + 'static {
    /// The store under test.
    type Store: EventStore + SnapshotStore + CheckpointStore;

    /// A new, empty store that shares nothing with the stores made before.
    fn create(&self) -> impl Future<Output = Self::Store> + Send;

    /// Overwrites the stored payload of the event at `version` in `stream` with
    /// `payload`, bypassing the store's API (as disk corruption or a manual edit would).
    fn corrupt_payload(
        &self,
        store: &Self::Store,
        stream: &StreamId,
        version: u64,
        payload: Vec<u8>,
    ) -> impl Future<Output = ()> + Send;
}

/// Generates one `#[tokio::test]` per conformance test.
///
/// The argument is an expression evaluating to a future of `Option<F>` where
/// `F: StoreFactory`; `None` skips every test (for a server that is not configured:
/// see [`crate::services::service_url`]).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@tests $factory;
            expected_version_matrix
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(f) = $factory.await {
                    $crate::conformance::$name(&f).await;
                }
            }
        )*
    };
}

/// Placeholder; the full suite follows.
pub async fn expected_version_matrix<F: StoreFactory>(_f: &F) {}
