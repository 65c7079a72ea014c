//! A small shop, event-sourced with mink: orders and the stock of each product.
//!
//! | module | holds |
//! |---|---|
//! | [`order`] | the `Order` aggregate: events, state, rules |
//! | [`inventory`] | the `Inventory` aggregate (stock of one SKU) |
//! | [`service`] | the command handlers: load, decide, save, retry on conflict |
//! | [`lost_reply`] | a store wrapper that loses a reply, to show idempotent retries |
//! | [`scenario`] | the story the `shop` binary tells, on any store |
//!
//! Run it with `cargo run -p mink-examples --bin shop`.

pub mod inventory;
pub mod lost_reply;
pub mod order;
pub mod scenario;
pub mod service;

pub use inventory::{Inventory, InventoryError, InventoryEvent};
pub use order::{Order, OrderError, OrderEvent, OrderLine, OrderStatus};
pub use scenario::{Narrator, ShopReport, run};
pub use service::{Shop, ShopError};
