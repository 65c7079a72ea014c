//! The conformance suite on the in-memory store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mink_es::{MemoryStore, StreamId};
use mink_testing::StoreFactory;

struct MemoryFactory;

impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;

    async fn create(&self) -> MemoryStore {
        MemoryStore::new()
    }

    async fn corrupt_payload(
        &self,
        store: &MemoryStore,
        stream: &StreamId,
        version: u64,
        payload: Vec<u8>,
    ) {
        assert!(store.tamper_payload(stream, version, payload.into()));
    }
}

mink_testing::conformance_tests!(async { Some(MemoryFactory) });

struct MemoryCommandStores;

impl mink_testing::command_stores::CommandStoreFactory for MemoryCommandStores {
    type Idempotency = mink_es::command::idempotency::MemoryIdempotencyStore;
    type Audit = mink_es::command::audit::MemoryAuditStore;

    async fn idempotency(&self) -> Self::Idempotency {
        Default::default()
    }

    async fn audit(&self) -> Self::Audit {
        Default::default()
    }
}

mod command_stores {
    mink_testing::command_store_tests!(async { Some(super::MemoryCommandStores) });
}

struct MemoryOutbox;

impl mink_testing::outbox::OutboxFactory for MemoryOutbox {
    type Store = MemoryStore;

    async fn create(
        &self,
        outbox: mink_es::outbox::Outbox,
    ) -> (
        MemoryStore,
        std::sync::Arc<dyn mink_es::outbox::OutboxStore>,
    ) {
        let store = MemoryStore::with_outbox(outbox);
        let o = store.outbox_store().expect("configured");
        (store, std::sync::Arc::new(o))
    }
}

mod outbox {
    mink_testing::outbox_tests!(async { Some(super::MemoryOutbox) });
}
