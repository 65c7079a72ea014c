//! # mink-es
//!
//! Event sourcing and CQRS for Rust: an event store with optimistic concurrency and a
//! global, gap-safe feed; aggregates; snapshots; subscriptions.
//!
//! This crate holds the model and the contracts, plus an in-memory store for tests.
//! Durable stores live in adapter crates (`mink-sqlite`, …) and all pass the same
//! conformance suite (`mink-testing`).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use mink_es::{Aggregate, MemoryStore, Repository};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
//! enum AccountEvent {
//!     #[serde(rename = "Deposited")]
//!     Deposited { amount: u64 },
//!     #[serde(rename = "Withdrawn")]
//!     Withdrawn { amount: u64 },
//! }
//!
//! #[derive(Default)]
//! struct Account { balance: u64 }
//!
//! impl Aggregate for Account {
//!     const TYPE: &'static str = "Account";
//!     type Event = AccountEvent;
//!     fn apply(&mut self, e: &AccountEvent) {
//!         match e {
//!             AccountEvent::Deposited { amount } => self.balance += amount,
//!             AccountEvent::Withdrawn { amount } => self.balance -= amount,
//!         }
//!     }
//! }
//!
//! let repo = Repository::<Account, _>::new(MemoryStore::new());
//! let mut acc = repo.load("alice").await?;
//! acc.decide(|s| -> Result<_, String> {
//!     Ok(vec![AccountEvent::Deposited { amount: 50 }])
//! }).unwrap();
//! repo.save(&mut acc).await?;
//! assert_eq!(repo.load("alice").await?.state().balance, 50);
//! # Ok::<(), mink_es::Error>(())
//! # });
//! ```

pub mod aggregate;
pub mod codec;
pub mod command;
pub mod error;
pub mod event;
pub mod memory;
pub mod outbox;
pub mod position;
pub mod projection;
#[cfg(feature = "protobuf")]
pub mod protobuf;
pub mod readmodel;
pub mod replay;
pub mod repository;
pub mod schema;
pub mod snapshot;
pub mod store;
pub mod stream_id;
pub mod subscription;
pub mod upcast;
pub mod version;

pub use aggregate::{Aggregate, AggregateRoot, DomainEvent};
#[cfg(feature = "msgpack")]
pub use codec::MsgPackCodec;
pub use codec::{Codec, EventCodec, JsonCodec, SerdeEvents, SerdeFormat};
pub use error::{BoxError, Error, EventTypeError, Result, StreamIdError};
pub use event::{
    CodecTag, EventId, EventType, MAX_EVENT_TYPE_LEN, Metadata, NewEvent, StoredEvent, now_micros,
};
pub use memory::MemoryStore;
pub use position::Position;
pub use replay::{EventDecoder, ReplayMode, UnknownTypes};
pub use repository::{NoSnapshots, Repository, SnapshotStrategy, Snapshotting};
pub use schema::{SchemaRegistry, Upcaster};
pub use snapshot::{CheckpointStore, Snapshot, SnapshotContext, SnapshotPolicy, SnapshotStore};
pub use store::{
    AppendResult, EventStore, FeedFilter, FeedPage, FeedReader, FeedSignal, StoreLimits,
    StreamInfo, StreamReader, StreamWriter,
};
pub use stream_id::{MAX_STREAM_ID_LEN, StreamId};
pub use subscription::{Subscription, SubscriptionOptions};
pub use upcast::Upcasting;
pub use version::ExpectedVersion;

/// Re-exported so that users and adapters name the same versions.
pub use bytes::Bytes;
pub use uuid::Uuid;

/// The traits most code needs in scope: `use mink_es::prelude::*;`.
pub mod prelude {
    pub use crate::aggregate::{Aggregate, DomainEvent};
    pub use crate::codec::Codec;
    pub use crate::snapshot::{CheckpointStore, SnapshotStore};
    pub use crate::store::{EventStore, FeedReader, StreamReader, StreamWriter};
}
