//! The `Order` aggregate: placed with lines, then paid and shipped, or cancelled.
//!
//! The shape every mink aggregate has:
//!
//! - an **event enum** whose variants are the facts that can happen to an order. Each
//!   variant names its stored type explicitly with `#[serde(rename = "...")]`, so that
//!   renaming a Rust variant never changes what is in the database;
//! - a **state** struct that [`Aggregate::apply`] folds events into (it never fails:
//!   events are facts that already happened);
//! - **decisions**: plain functions from the current state and a command's inputs to
//!   the new events, or a typed error when a rule says no. They run through
//!   [`mink_es::AggregateRoot::decide`].

use mink_es::Aggregate;
use serde::{Deserialize, Serialize};

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product's stock-keeping unit, such as `KB-01`.
    pub sku: String,
    /// How many units.
    pub quantity: u32,
    /// Price of one unit, in cents.
    pub unit_price_cents: u64,
}

impl OrderLine {
    /// A line of `quantity` units of `sku` at `unit_price_cents` each.
    pub fn new(sku: &str, quantity: u32, unit_price_cents: u64) -> Self {
        OrderLine {
            sku: sku.to_owned(),
            quantity,
            unit_price_cents,
        }
    }

    /// The line's total, in cents.
    pub fn total_cents(&self) -> u64 {
        u64::from(self.quantity) * self.unit_price_cents
    }
}

/// What can happen to an order. The `rename`d names are the stored event types.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    /// A customer placed the order.
    #[serde(rename = "OrderPlaced")]
    Placed {
        /// Who ordered.
        customer: String,
        /// What they ordered.
        lines: Vec<OrderLine>,
    },
    /// The order was paid in full.
    #[serde(rename = "OrderPaid")]
    Paid {
        /// The amount received, in cents.
        amount_cents: u64,
        /// The payment provider's reference.
        payment_ref: String,
    },
    /// The order left the warehouse.
    #[serde(rename = "OrderShipped")]
    Shipped {
        /// Who carries it.
        carrier: String,
    },
    /// The order was cancelled.
    #[serde(rename = "OrderCancelled")]
    Cancelled {
        /// Why.
        reason: String,
        /// What must be paid back to the customer, in cents.
        refund_cents: u64,
    },
}

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Nothing was placed under this id yet.
    #[default]
    New,
    /// Placed, waiting for payment.
    Placed,
    /// Paid, waiting to be shipped.
    Paid,
    /// Shipped: final.
    Shipped,
    /// Cancelled: final.
    Cancelled,
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OrderStatus::New => "new",
            OrderStatus::Placed => "placed",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        })
    }
}

/// An order's state, rebuilt from its events. It is `Serialize`/`Deserialize` so that
/// the repository can snapshot it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Where the order is in its life.
    pub status: OrderStatus,
    /// Who ordered.
    pub customer: String,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// What was paid, in cents.
    pub paid_cents: u64,
    /// What is owed back after a cancellation, in cents.
    pub refund_cents: u64,
}

impl Aggregate for Order {
    /// The stream category: orders live in streams `Order-{id}`.
    const TYPE: &'static str = "Order";
    type Event = OrderEvent;

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { customer, lines } => {
                self.status = OrderStatus::Placed;
                self.customer.clone_from(customer);
                self.lines.clone_from(lines);
            }
            OrderEvent::Paid { amount_cents, .. } => {
                self.status = OrderStatus::Paid;
                self.paid_cents += amount_cents;
            }
            OrderEvent::Shipped { .. } => self.status = OrderStatus::Shipped,
            OrderEvent::Cancelled { refund_cents, .. } => {
                self.status = OrderStatus::Cancelled;
                self.refund_cents = *refund_cents;
            }
        }
    }
}

/// Why an order refused a command. Each rule of the domain is one variant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// An order with this id was already placed.
    #[error("the order was already placed")]
    AlreadyPlaced,
    /// An order needs at least one line.
    #[error("an order needs at least one line")]
    NoLines,
    /// A line orders zero units.
    #[error("the line for {sku} orders 0 units")]
    ZeroQuantity {
        /// The line's product.
        sku: String,
    },
    /// The order does not exist.
    #[error("there is no such order")]
    NotPlaced,
    /// The order was already paid.
    #[error("the order is already paid")]
    AlreadyPaid,
    /// The payment does not match the order's total.
    #[error("a payment of {paid_cents} cents does not match the total of {total_cents} cents")]
    WrongAmount {
        /// What was offered.
        paid_cents: u64,
        /// What the order costs.
        total_cents: u64,
    },
    /// Only a paid order may ship.
    #[error("cannot ship an unpaid order")]
    NotPaid,
    /// A shipped order can no longer change.
    #[error("the order was already shipped")]
    AlreadyShipped,
    /// A cancelled order can no longer change.
    #[error("the order was cancelled")]
    Cancelled,
}

impl Order {
    /// The order's total, in cents.
    pub fn total_cents(&self) -> u64 {
        self.lines.iter().map(OrderLine::total_cents).sum()
    }

    /// Fails unless the order is live (placed or paid).
    fn ensure_open(&self) -> Result<(), OrderError> {
        match self.status {
            OrderStatus::New => Err(OrderError::NotPlaced),
            OrderStatus::Shipped => Err(OrderError::AlreadyShipped),
            OrderStatus::Cancelled => Err(OrderError::Cancelled),
            OrderStatus::Placed | OrderStatus::Paid => Ok(()),
        }
    }

    /// Decides to place the order.
    pub fn place(
        &self,
        customer: &str,
        lines: Vec<OrderLine>,
    ) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status != OrderStatus::New {
            return Err(OrderError::AlreadyPlaced);
        }
        if lines.is_empty() {
            return Err(OrderError::NoLines);
        }
        if let Some(line) = lines.iter().find(|l| l.quantity == 0) {
            return Err(OrderError::ZeroQuantity {
                sku: line.sku.clone(),
            });
        }
        Ok(vec![OrderEvent::Placed {
            customer: customer.to_owned(),
            lines,
        }])
    }

    /// Decides to record a payment of the full total.
    pub fn pay(&self, amount_cents: u64, payment_ref: &str) -> Result<Vec<OrderEvent>, OrderError> {
        self.ensure_open()?;
        if self.status == OrderStatus::Paid {
            return Err(OrderError::AlreadyPaid);
        }
        if amount_cents != self.total_cents() {
            return Err(OrderError::WrongAmount {
                paid_cents: amount_cents,
                total_cents: self.total_cents(),
            });
        }
        Ok(vec![OrderEvent::Paid {
            amount_cents,
            payment_ref: payment_ref.to_owned(),
        }])
    }

    /// Decides to ship the order: **an unpaid order cannot ship**.
    pub fn ship(&self, carrier: &str) -> Result<Vec<OrderEvent>, OrderError> {
        self.ensure_open()?;
        if self.status != OrderStatus::Paid {
            return Err(OrderError::NotPaid);
        }
        Ok(vec![OrderEvent::Shipped {
            carrier: carrier.to_owned(),
        }])
    }

    /// Decides to cancel the order: **a shipped order cannot be cancelled**. Whatever
    /// was paid is owed back.
    pub fn cancel(&self, reason: &str) -> Result<Vec<OrderEvent>, OrderError> {
        self.ensure_open()?;
        Ok(vec![OrderEvent::Cancelled {
            reason: reason.to_owned(),
            refund_cents: self.paid_cents,
        }])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn placed() -> Order {
        let mut o = Order::default();
        for e in o
            .place("ann", vec![OrderLine::new("KB-01", 2, 500)])
            .unwrap()
        {
            o.apply(&e);
        }
        o
    }

    #[test]
    fn the_rules() {
        let o = placed();
        assert_eq!(o.total_cents(), 1000);
        assert_eq!(o.ship("dhl"), Err(OrderError::NotPaid));
        assert!(matches!(
            o.pay(999, "p"),
            Err(OrderError::WrongAmount { .. })
        ));
        let mut paid = o.clone();
        paid.apply(&o.pay(1000, "p").unwrap()[0]);
        assert_eq!(paid.pay(1000, "p"), Err(OrderError::AlreadyPaid));
        let mut shipped = paid.clone();
        shipped.apply(&paid.ship("dhl").unwrap()[0]);
        assert_eq!(shipped.cancel("late"), Err(OrderError::AlreadyShipped));
        assert_eq!(
            paid.cancel("changed mind").unwrap(),
            vec![OrderEvent::Cancelled {
                reason: "changed mind".into(),
                refund_cents: 1000
            }]
        );
        assert_eq!(Order::default().pay(1, "p"), Err(OrderError::NotPlaced));
        assert_eq!(
            Order::default().place("x", vec![]),
            Err(OrderError::NoLines)
        );
    }
}
