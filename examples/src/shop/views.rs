//! The shop's read models, kept by projections:
//!
//! * [`OrderSummary`], kept **inline** by [`OrderSummaries`]: every append of an order's
//!   events updates its row in the same transaction, so a command's reply and the
//!   summary never disagree (if the projection failed, the command would fail and store
//!   nothing);
//! * [`StockLevel`], kept **asynchronously** by [`StockLevels`]: a worker of a
//!   `ProjectionEngine` follows the feed and updates the rows in the transaction that
//!   moves its checkpoint, so each event counts exactly once, even across crashes.
//!
//! Both are plain serde structs with declared, queryable fields
//! ([`ReadModel`]); the story queries them with the typed query builder.

use futures::future::BoxFuture;
use mink_es::projection::{ProjectionError, ReadModelProjection};
use mink_es::readmodel::{Field, ReadModel, ReadModelRepository, ReadModelStore, Schema};
use mink_es::{EventDecoder, FeedFilter, ReplayMode, SerdeEvents, StoredEvent};
use serde::{Deserialize, Serialize};

use super::{InventoryEvent, OrderEvent};

/// One order, as the shop's back office lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// The order's stream id (`Order-…`).
    pub id: String,
    /// Who ordered.
    pub customer: String,
    /// `placed`, `paid`, `shipped` or `cancelled`.
    pub status: String,
    /// The order's total, in cents.
    pub total_cents: i64,
    /// Units ordered, over all lines.
    pub units: i64,
    /// The carrier, once shipped.
    pub carrier: Option<String>,
}

impl ReadModel for OrderSummary {
    const NAME: &'static str = "shop_orders";
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::text("customer").indexed(),
        Field::text("status").indexed(),
        Field::integer("total_cents"),
        Field::integer("units"),
        Field::text("carrier").nullable(),
    ];
}

/// The stock of one product, as the warehouse screen shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StockLevel {
    /// The inventory's stream id (`Inventory-<sku>`).
    pub id: String,
    /// Units in the warehouse and not promised to an order.
    pub available: i64,
    /// Units promised to orders not yet shipped.
    pub reserved: i64,
    /// Units that left with shipped orders.
    pub dispatched: i64,
}

impl ReadModel for StockLevel {
    const NAME: &'static str = "shop_stock";
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::integer("available"),
        Field::integer("reserved"),
        Field::integer("dispatched"),
    ];
}

/// Decodes an event of the shop into `E` (`None` for another aggregate's events).
fn decode<E: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static>(
    event: &StoredEvent,
) -> Result<Vec<E>, mink_es::Error> {
    let mut out = Vec::new();
    EventDecoder::<E, SerdeEvents>::new(SerdeEvents::default(), ReplayMode::Strict)
        .decode_each(event, |e| out.push(e))?;
    Ok(out)
}

/// Keeps [`OrderSummary`] inline, in the transaction of each append of an order.
pub struct OrderSummaries;

impl ReadModelProjection for OrderSummaries {
    fn name(&self) -> &str {
        "shop_orders"
    }

    fn filter(&self) -> FeedFilter {
        FeedFilter::all().category("Order")
    }

    fn models(&self) -> mink_es::Result<Vec<Schema>> {
        Ok(vec![Schema::of::<OrderSummary>()?])
    }

    fn apply<'a>(
        &'a self,
        models: &'a dyn ReadModelStore,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let orders = ReadModelRepository::<OrderSummary, _>::new(models);
            for stored in events {
                let id = stored.stream_id.as_str();
                for event in decode::<OrderEvent>(stored)? {
                    let summary = match event {
                        OrderEvent::Placed { customer, lines } => OrderSummary {
                            id: id.to_owned(),
                            customer,
                            status: "placed".into(),
                            total_cents: lines
                                .iter()
                                .map(|l| i64::try_from(l.total_cents()).unwrap_or(i64::MAX))
                                .sum(),
                            units: lines.iter().map(|l| i64::from(l.quantity)).sum(),
                            carrier: None,
                        },
                        other => {
                            // A later event of an order whose row must exist: if it does
                            // not, the projection refuses, and the append fails.
                            let Some(mut row) = orders.get(id).await?.map(|v| v.model) else {
                                return Err(ProjectionError::poison(format!(
                                    "{id}: {} before OrderPlaced",
                                    stored.event_type
                                )));
                            };
                            match other {
                                OrderEvent::Paid { .. } => row.status = "paid".into(),
                                OrderEvent::Shipped { carrier } => {
                                    row.status = "shipped".into();
                                    row.carrier = Some(carrier);
                                }
                                OrderEvent::Cancelled { .. } => row.status = "cancelled".into(),
                                OrderEvent::Placed { .. } => {}
                            }
                            row
                        }
                    };
                    orders.upsert(&summary).await?;
                }
            }
            Ok(())
        })
    }
}

/// Keeps [`StockLevel`] asynchronously, from the inventory events of the feed.
pub struct StockLevels;

impl ReadModelProjection for StockLevels {
    fn name(&self) -> &str {
        "shop_stock"
    }

    fn filter(&self) -> FeedFilter {
        FeedFilter::all().category("Inventory")
    }

    fn models(&self) -> mink_es::Result<Vec<Schema>> {
        Ok(vec![Schema::of::<StockLevel>()?])
    }

    fn apply<'a>(
        &'a self,
        models: &'a dyn ReadModelStore,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let stock = ReadModelRepository::<StockLevel, _>::new(models);
            for stored in events {
                let id = stored.stream_id.as_str();
                let mut row = stock.get(id).await?.map_or_else(
                    || StockLevel {
                        id: id.to_owned(),
                        available: 0,
                        reserved: 0,
                        dispatched: 0,
                    },
                    |v| v.model,
                );
                for event in decode::<InventoryEvent>(stored)? {
                    match event {
                        InventoryEvent::Received { quantity } => {
                            row.available += i64::from(quantity);
                        }
                        InventoryEvent::Reserved { quantity, .. } => {
                            row.available -= i64::from(quantity);
                            row.reserved += i64::from(quantity);
                        }
                        InventoryEvent::Released { quantity, .. } => {
                            row.available += i64::from(quantity);
                            row.reserved -= i64::from(quantity);
                        }
                        InventoryEvent::Dispatched { quantity, .. } => {
                            row.reserved -= i64::from(quantity);
                            row.dispatched += i64::from(quantity);
                        }
                    }
                }
                stock.upsert(&row).await?;
            }
            Ok(())
        })
    }
}
