//! The `Inventory` aggregate: the stock of one product (one SKU per stream,
//! `Inventory-{sku}`).
//!
//! Stock is received, reserved for an order, and then either released (the order was
//! cancelled) or dispatched (the order shipped). The rule that matters: **nothing can be
//! reserved beyond what is available**.

use std::collections::BTreeMap;

use mink_es::Aggregate;
use serde::{Deserialize, Serialize};

/// What can happen to a product's stock. The `rename`d names are the stored event types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryEvent {
    /// Units arrived at the warehouse.
    #[serde(rename = "StockReceived")]
    Received {
        /// How many.
        quantity: u32,
    },
    /// Units were set aside for an order.
    #[serde(rename = "StockReserved")]
    Reserved {
        /// The order they are for.
        order_id: String,
        /// How many.
        quantity: u32,
    },
    /// An order's reservation was given back (the order was cancelled).
    #[serde(rename = "StockReleased")]
    Released {
        /// The order.
        order_id: String,
        /// How many units went back to available stock.
        quantity: u32,
    },
    /// An order's reserved units left the warehouse (the order shipped).
    #[serde(rename = "StockDispatched")]
    Dispatched {
        /// The order.
        order_id: String,
        /// How many units left.
        quantity: u32,
    },
}

/// The stock of one product, rebuilt from its events (and snapshotted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Units in the warehouse, reserved or not.
    pub on_hand: u32,
    /// Units reserved per order id.
    pub reservations: BTreeMap<String, u32>,
}

impl Inventory {
    /// Units reserved for orders.
    pub fn reserved(&self) -> u32 {
        self.reservations.values().sum()
    }

    /// Units that can still be reserved.
    pub fn available(&self) -> u32 {
        self.on_hand.saturating_sub(self.reserved())
    }
}

impl Aggregate for Inventory {
    /// The stream category: stock lives in streams `Inventory-{sku}`.
    const TYPE: &'static str = "Inventory";
    type Event = InventoryEvent;

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::Received { quantity } => self.on_hand += quantity,
            InventoryEvent::Reserved { order_id, quantity } => {
                *self.reservations.entry(order_id.clone()).or_default() += quantity;
            }
            InventoryEvent::Released { order_id, .. } => {
                self.reservations.remove(order_id);
            }
            InventoryEvent::Dispatched { order_id, quantity } => {
                self.reservations.remove(order_id);
                self.on_hand = self.on_hand.saturating_sub(*quantity);
            }
        }
    }
}

/// Why the stock of a product refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// A quantity of zero was given.
    #[error("the quantity must be at least 1")]
    ZeroQuantity,
    /// More units were asked for than are available.
    #[error("only {available} available, {requested} requested")]
    InsufficientStock {
        /// Units asked for.
        requested: u32,
        /// Units that could have been reserved.
        available: u32,
    },
    /// The order already holds a reservation of this product.
    #[error("order {order_id} already holds a reservation")]
    AlreadyReserved {
        /// The order.
        order_id: String,
    },
    /// The order holds no reservation of this product.
    #[error("order {order_id} holds no reservation")]
    NoReservation {
        /// The order.
        order_id: String,
    },
}

impl Inventory {
    /// Decides to take in `quantity` units.
    pub fn receive(&self, quantity: u32) -> Result<Vec<InventoryEvent>, InventoryError> {
        if quantity == 0 {
            return Err(InventoryError::ZeroQuantity);
        }
        Ok(vec![InventoryEvent::Received { quantity }])
    }

    /// Decides to reserve `quantity` units for `order_id`: **never more than available**.
    pub fn reserve(
        &self,
        order_id: &str,
        quantity: u32,
    ) -> Result<Vec<InventoryEvent>, InventoryError> {
        if quantity == 0 {
            return Err(InventoryError::ZeroQuantity);
        }
        if self.reservations.contains_key(order_id) {
            return Err(InventoryError::AlreadyReserved {
                order_id: order_id.to_owned(),
            });
        }
        if quantity > self.available() {
            return Err(InventoryError::InsufficientStock {
                requested: quantity,
                available: self.available(),
            });
        }
        Ok(vec![InventoryEvent::Reserved {
            order_id: order_id.to_owned(),
            quantity,
        }])
    }

    /// Decides to give back the reservation of `order_id`.
    pub fn release(&self, order_id: &str) -> Result<Vec<InventoryEvent>, InventoryError> {
        let quantity = self.reservation_of(order_id)?;
        Ok(vec![InventoryEvent::Released {
            order_id: order_id.to_owned(),
            quantity,
        }])
    }

    /// Decides to dispatch the reservation of `order_id`.
    pub fn dispatch(&self, order_id: &str) -> Result<Vec<InventoryEvent>, InventoryError> {
        let quantity = self.reservation_of(order_id)?;
        Ok(vec![InventoryEvent::Dispatched {
            order_id: order_id.to_owned(),
            quantity,
        }])
    }

    fn reservation_of(&self, order_id: &str) -> Result<u32, InventoryError> {
        self.reservations
            .get(order_id)
            .copied()
            .ok_or_else(|| InventoryError::NoReservation {
                order_id: order_id.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cannot_reserve_more_than_available() {
        let mut inv = Inventory::default();
        inv.apply(&inv.receive(3).unwrap()[0]);
        inv.apply(&inv.reserve("o1", 2).unwrap()[0]);
        assert_eq!(inv.available(), 1);
        assert_eq!(
            inv.reserve("o2", 2),
            Err(InventoryError::InsufficientStock {
                requested: 2,
                available: 1
            })
        );
        inv.apply(&inv.release("o1").unwrap()[0]);
        assert_eq!(inv.available(), 3);
        inv.apply(&inv.reserve("o2", 3).unwrap()[0]);
        inv.apply(&inv.dispatch("o2").unwrap()[0]);
        assert_eq!((inv.on_hand, inv.reserved(), inv.available()), (0, 0, 0));
        assert!(matches!(
            inv.dispatch("o2"),
            Err(InventoryError::NoReservation { .. })
        ));
    }
}
