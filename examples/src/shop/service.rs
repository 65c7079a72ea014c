//! The shop's application service: one method per command, each loading an aggregate
//! through a [`Repository`], deciding, and saving.
//!
//! An order touches two kinds of aggregate (the order and the stock of each product it
//! lists). Each save is its own atomic append; the service keeps them consistent the
//! event-sourcing way, with compensating events (a failed reservation releases what was
//! already reserved and cancels the order) rather than one big transaction.

use mink_es::prelude::*;
use mink_es::{Aggregate, JsonCodec, Repository, SnapshotPolicy, Snapshotting};

use super::inventory::{Inventory, InventoryError};
use super::order::{Order, OrderError, OrderLine};

/// Take a snapshot of an aggregate each time its stream crosses a multiple of this many
/// events; loading then reads the snapshot and only the events after it.
pub const SNAPSHOT_EVERY: u64 = 5;

/// How many times a command is decided again after losing a race with another writer.
pub const MAX_ATTEMPTS: u32 = 3;

/// A repository of `A` in store `S`, with JSON events and snapshots in the same store.
pub type Repo<A, S> = Repository<A, S, JsonCodec, Snapshotting<S, JsonCodec>>;

/// Why a shop command failed.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// An order refused the command (a rule of the domain).
    #[error("order {order_id}: {source}")]
    Order {
        /// The order.
        order_id: String,
        /// The rule that said no.
        #[source]
        source: OrderError,
    },
    /// A product's stock refused the command (a rule of the domain).
    #[error("stock of {sku}: {source}")]
    Stock {
        /// The product.
        sku: String,
        /// The rule that said no.
        #[source]
        source: InventoryError,
    },
    /// The event store failed, or a conflict outlasted every retry.
    #[error(transparent)]
    Store(#[from] mink_es::Error),
}

/// A domain error that knows which [`ShopError`] it becomes for the aggregate `id`.
pub trait Rejection {
    /// The error, naming the aggregate that refused.
    fn for_aggregate(self, id: &str) -> ShopError;
}

impl Rejection for OrderError {
    fn for_aggregate(self, id: &str) -> ShopError {
        ShopError::Order {
            order_id: id.to_owned(),
            source: self,
        }
    }
}

impl Rejection for InventoryError {
    fn for_aggregate(self, id: &str) -> ShopError {
        ShopError::Stock {
            sku: id.to_owned(),
            source: self,
        }
    }
}

/// The shop: an order repository and a stock repository on one store.
pub struct Shop<S: EventStore + SnapshotStore> {
    store: S,
    orders: Repo<Order, S>,
    stock: Repo<Inventory, S>,
}

impl<S: EventStore + SnapshotStore> Shop<S> {
    /// A shop on `store`, snapshotting every [`SNAPSHOT_EVERY`] events.
    pub fn new(store: S) -> Self {
        Shop {
            orders: Repository::new(store.clone())
                .with_snapshots(store.clone(), SnapshotPolicy::every(SNAPSHOT_EVERY)),
            stock: Repository::new(store.clone())
                .with_snapshots(store.clone(), SnapshotPolicy::every(SNAPSHOT_EVERY)),
            store,
        }
    }

    /// The event store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The order repository.
    pub fn orders(&self) -> &Repo<Order, S> {
        &self.orders
    }

    /// The stock repository.
    pub fn stock(&self) -> &Repo<Inventory, S> {
        &self.stock
    }

    /// Loads aggregate `id`, runs `decision` on its state and saves the events it
    /// returns; returns the aggregate's new version.
    ///
    /// This is the usual shape of a command handler. When another writer saved the
    /// same aggregate in between (a [`mink_es::Error::Conflict`]), it reloads and
    /// decides again on the fresh state, up to [`MAX_ATTEMPTS`] times: the decision may
    /// come out differently, which is the point.
    pub async fn execute<A, E>(
        repo: &Repo<A, S>,
        id: &str,
        decision: impl Fn(&A) -> Result<Vec<A::Event>, E>,
    ) -> Result<u64, ShopError>
    where
        A: Aggregate + serde::Serialize + serde::de::DeserializeOwned,
        E: Rejection,
    {
        let mut attempt = 1;
        loop {
            let mut root = repo.load(id).await?;
            root.decide(&decision).map_err(|e| e.for_aggregate(id))?;
            match repo.save(&mut root).await {
                Ok(saved) => return Ok(saved.version),
                Err(e) if e.is_conflict() && attempt < MAX_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes `quantity` units of `sku` into stock.
    pub async fn receive_stock(&self, sku: &str, quantity: u32) -> Result<u64, ShopError> {
        Self::execute(&self.stock, sku, |s: &Inventory| s.receive(quantity)).await
    }

    /// Places order `order_id` and reserves its stock. When a line cannot be reserved,
    /// the reservations already made are released, the order is cancelled, and the
    /// stock's refusal is returned.
    pub async fn place_order(
        &self,
        order_id: &str,
        customer: &str,
        lines: Vec<OrderLine>,
    ) -> Result<(), ShopError> {
        Self::execute(&self.orders, order_id, |o: &Order| {
            o.place(customer, lines.clone())
        })
        .await?;
        self.reserve_stock_for(order_id).await
    }

    /// Reserves the stock of every line of a placed order; on the first refusal,
    /// releases what was reserved and cancels the order.
    pub async fn reserve_stock_for(&self, order_id: &str) -> Result<(), ShopError> {
        let order = self.orders.load(order_id).await?;
        let mut reserved: Vec<&str> = Vec::new();
        for line in &order.state().lines {
            let result = Self::execute(&self.stock, &line.sku, |s: &Inventory| {
                s.reserve(order_id, line.quantity)
            })
            .await;
            match result {
                Ok(_) => reserved.push(&line.sku),
                Err(refusal) => {
                    for sku in reserved {
                        Self::execute(&self.stock, sku, |s: &Inventory| s.release(order_id))
                            .await?;
                    }
                    let reason = format!("out of stock: {}", line.sku);
                    Self::execute(&self.orders, order_id, |o: &Order| o.cancel(&reason)).await?;
                    return Err(refusal);
                }
            }
        }
        Ok(())
    }

    /// Records the payment of an order.
    pub async fn pay(
        &self,
        order_id: &str,
        amount_cents: u64,
        payment_ref: &str,
    ) -> Result<u64, ShopError> {
        Self::execute(&self.orders, order_id, |o: &Order| {
            o.pay(amount_cents, payment_ref)
        })
        .await
    }

    /// Ships an order and dispatches its reserved stock.
    pub async fn ship(&self, order_id: &str, carrier: &str) -> Result<u64, ShopError> {
        let version = Self::execute(&self.orders, order_id, |o: &Order| o.ship(carrier)).await?;
        let order = self.orders.load(order_id).await?;
        for line in &order.state().lines {
            Self::execute(&self.stock, &line.sku, |s: &Inventory| s.dispatch(order_id)).await?;
        }
        Ok(version)
    }

    /// Cancels an order and releases its reserved stock.
    pub async fn cancel(&self, order_id: &str, reason: &str) -> Result<u64, ShopError> {
        let version = Self::execute(&self.orders, order_id, |o: &Order| o.cancel(reason)).await?;
        self.release_stock_for(order_id).await?;
        Ok(version)
    }

    /// Releases whatever stock order `order_id` still holds.
    pub async fn release_stock_for(&self, order_id: &str) -> Result<(), ShopError> {
        let order = self.orders.load(order_id).await?;
        for line in &order.state().lines {
            Self::execute(&self.stock, &line.sku, |s: &Inventory| {
                if s.reservations.contains_key(order_id) {
                    s.release(order_id)
                } else {
                    Ok(Vec::new()) // Nothing held: saving nothing is a no-op.
                }
            })
            .await?;
        }
        Ok(())
    }
}
