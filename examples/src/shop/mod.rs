//! A small shop, event-sourced with mink: orders and the stock of each product, changed
//! only by commands dispatched through a command bus.
//!
//! | module | holds |
//! |---|---|
//! | [`order`] | the `Order` aggregate: events, state, rules |
//! | [`inventory`] | the `Inventory` aggregate (stock of one SKU) |
//! | [`commands`] | the commands: `ReceiveStock`, `PlaceOrder`, `PayOrder`, `ShipOrder`, `CancelOrder` |
//! | [`service`] | the bus with mink's middleware, and the command handlers |
//! | [`faults`] | a store wrapper that loses a reply or holds a save, to show retries |
//! | [`webhooks`] | the outbox routes, a webhook receiver, and the outbox processor that delivers to it |
//! | [`views`] | the read models: order summaries kept inline, stock levels kept by an async projection |
//! | [`scenario`] | the story the `shop` binary tells, on any store |
//!
//! The store is opened with the [outbox routes](webhooks::outbox), so every append also
//! writes the messages for its events in the same transaction; an outbox processor
//! delivers them in the background, as signed webhooks, to a receiver in the same process.
//!
//! Run it with `cargo run -p mink-examples --bin shop`.

pub mod commands;
pub mod faults;
pub mod inventory;
pub mod order;
pub mod scenario;
pub mod service;
pub mod views;
pub mod webhooks;

pub use commands::{CancelOrder, OrderOutcome, PayOrder, PlaceOrder, ReceiveStock, ShipOrder};
pub use inventory::{Inventory, InventoryError, InventoryEvent};
pub use order::{Order, OrderError, OrderEvent, OrderLine, OrderStatus};
pub use scenario::{Narrator, ShopReport, run};
pub use service::{Caller, CommandStores, Dispatched, HandlerRun, Shop, ShopError};
pub use webhooks::{Received, Receiver, WebhookReport, Webhooks};
