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
//! | [`scenario`] | the story the `shop` binary tells, on any store |
//!
//! Run it with `cargo run -p mink-examples --bin shop`.

pub mod commands;
pub mod faults;
pub mod inventory;
pub mod order;
pub mod scenario;
pub mod service;

pub use commands::{CancelOrder, OrderOutcome, PayOrder, PlaceOrder, ReceiveStock, ShipOrder};
pub use inventory::{Inventory, InventoryError, InventoryEvent};
pub use order::{Order, OrderError, OrderEvent, OrderLine, OrderStatus};
pub use scenario::{Narrator, ShopReport, run};
pub use service::{Caller, CommandStores, Dispatched, HandlerRun, Shop, ShopError};
