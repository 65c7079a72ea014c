//! The shared conformance suite of `mink-testing`, on real SQLite files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mink_es::StreamId;
use mink_sqlite::SqliteStore;
use mink_testing::StoreFactory;

/// Makes each store in its own temporary directory, kept alive as long as the factory.
struct SqliteFactory {
    dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl SqliteFactory {
    fn new() -> Self {
        SqliteFactory {
            dirs: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl StoreFactory for SqliteFactory {
    type Store = SqliteStore;

    async fn create(&self) -> SqliteStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path().join("conformance.db")).expect("open store");
        self.dirs.lock().expect("lock").push(dir);
        store
    }

    async fn corrupt_payload(
        &self,
        store: &SqliteStore,
        stream: &StreamId,
        version: u64,
        payload: Vec<u8>,
    ) {
        let found = store
            .tamper_payload(stream, version, &payload)
            .expect("tamper");
        assert!(found, "no event {stream}@{version} to corrupt");
    }
}

mink_testing::conformance_tests!(async { Some(SqliteFactory::new()) });
