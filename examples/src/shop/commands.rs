//! The shop's commands: every change of state is one of these, dispatched through the
//! [`CommandBus`](mink_es::command::CommandBus) the [`Shop`](super::Shop) builds.
//!
//! A command is plain serde data. Besides its fields, each one says
//!
//! - what it returns (`Output`): an [`AggregateOutcome`] when it changes one aggregate,
//!   an [`OrderOutcome`] when it changes an order and the stock of its products;
//! - how to check it on its own ([`Command::validate`], run by the `Validation`
//!   middleware before any handler): empty ids, zero quantities and the like;
//! - its idempotency key: the client's request id. A command sent twice with the same
//!   request id runs once; the second dispatch gets the first one's result;
//! - the aggregate it targets, for logs and the audit log.
//!
//! Rules that need the current state (is there stock? is the order paid?) are not
//! checked here but by the aggregates, in the handlers.

use mink_es::command::{AggregateOutcome, Command, EventSummary, ValidationErrors};
use serde::{Deserialize, Serialize};

use super::order::OrderLine;

/// Adds the checks every shop command shares: a non-empty request id.
fn with_request_id(errors: ValidationErrors, request_id: &str) -> ValidationErrors {
    errors.require(
        !request_id.trim().is_empty(),
        "request_id",
        "must not be empty",
    )
}

/// Units of a product arrive at the warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveStock {
    /// The product.
    pub sku: String,
    /// How many units arrived.
    pub quantity: u32,
    /// The client's request id: the idempotency key.
    pub request_id: String,
}

impl Command for ReceiveStock {
    const NAME: &'static str = "ReceiveStock";
    type Output = AggregateOutcome;

    fn validate(&self) -> Result<(), ValidationErrors> {
        let errors = ValidationErrors::new()
            .require(!self.sku.trim().is_empty(), "sku", "must not be empty")
            .require(self.quantity > 0, "quantity", "must be at least 1");
        with_request_id(errors, &self.request_id).into_result()
    }

    fn idempotency_key(&self) -> Option<String> {
        Some(self.request_id.clone())
    }

    fn aggregate_id(&self) -> Option<String> {
        Some(self.sku.clone())
    }
}

/// A customer places an order; its stock is reserved in the same command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// The new order's id.
    pub order_id: String,
    /// Who orders.
    pub customer: String,
    /// What they order.
    pub lines: Vec<OrderLine>,
    /// The client's request id: the idempotency key.
    pub request_id: String,
}

impl Command for PlaceOrder {
    const NAME: &'static str = "PlaceOrder";
    type Output = OrderOutcome;

    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new()
            .require(
                !self.order_id.trim().is_empty(),
                "order_id",
                "must not be empty",
            )
            .require(
                !self.customer.trim().is_empty(),
                "customer",
                "must not be empty",
            )
            .require(!self.lines.is_empty(), "lines", "must not be empty");
        for (i, line) in self.lines.iter().enumerate() {
            errors = errors
                .require(
                    !line.sku.trim().is_empty(),
                    format!("lines[{i}].sku"),
                    "must not be empty",
                )
                .require(
                    line.quantity > 0,
                    format!("lines[{i}].quantity"),
                    "must be at least 1",
                );
        }
        with_request_id(errors, &self.request_id).into_result()
    }

    fn idempotency_key(&self) -> Option<String> {
        Some(self.request_id.clone())
    }

    fn aggregate_id(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

/// A payment for an order arrives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayOrder {
    /// The order.
    pub order_id: String,
    /// The amount paid, in cents.
    pub amount_cents: u64,
    /// The payment provider's reference.
    pub payment_ref: String,
    /// The client's request id: the idempotency key.
    pub request_id: String,
}

impl Command for PayOrder {
    const NAME: &'static str = "PayOrder";
    type Output = AggregateOutcome;

    fn validate(&self) -> Result<(), ValidationErrors> {
        let errors = ValidationErrors::new()
            .require(
                !self.order_id.trim().is_empty(),
                "order_id",
                "must not be empty",
            )
            .require(self.amount_cents > 0, "amount_cents", "must be positive")
            .require(
                !self.payment_ref.trim().is_empty(),
                "payment_ref",
                "must not be empty",
            );
        with_request_id(errors, &self.request_id).into_result()
    }

    fn idempotency_key(&self) -> Option<String> {
        Some(self.request_id.clone())
    }

    fn aggregate_id(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

/// A paid order leaves the warehouse; its reserved stock is dispatched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipOrder {
    /// The order.
    pub order_id: String,
    /// Who carries it.
    pub carrier: String,
    /// The client's request id: the idempotency key.
    pub request_id: String,
}

impl Command for ShipOrder {
    const NAME: &'static str = "ShipOrder";
    type Output = OrderOutcome;

    fn validate(&self) -> Result<(), ValidationErrors> {
        let errors = ValidationErrors::new()
            .require(
                !self.order_id.trim().is_empty(),
                "order_id",
                "must not be empty",
            )
            .require(
                !self.carrier.trim().is_empty(),
                "carrier",
                "must not be empty",
            );
        with_request_id(errors, &self.request_id).into_result()
    }

    fn idempotency_key(&self) -> Option<String> {
        Some(self.request_id.clone())
    }

    fn aggregate_id(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

/// An order is cancelled; the stock it still holds goes back on the shelf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrder {
    /// The order.
    pub order_id: String,
    /// Why.
    pub reason: String,
    /// The client's request id: the idempotency key.
    pub request_id: String,
}

impl Command for CancelOrder {
    const NAME: &'static str = "CancelOrder";
    type Output = OrderOutcome;

    fn validate(&self) -> Result<(), ValidationErrors> {
        let errors = ValidationErrors::new().require(
            !self.order_id.trim().is_empty(),
            "order_id",
            "must not be empty",
        );
        with_request_id(errors, &self.request_id).into_result()
    }

    fn idempotency_key(&self) -> Option<String> {
        Some(self.request_id.clone())
    }

    fn aggregate_id(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

/// What a command that changes an order and the stock of its products returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderOutcome {
    /// The order.
    pub order_id: String,
    /// The order's version after the command.
    pub order_version: u64,
    /// Every event the command stored, order and stock alike, in the order written.
    pub events: Vec<EventSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_fields() {
        let cmd = PlaceOrder {
            order_id: "1".into(),
            customer: "ann".into(),
            lines: vec![OrderLine::new("KB-01", 1, 100), OrderLine::new("", 0, 100)],
            request_id: " ".into(),
        };
        let Err(errors) = cmd.validate() else {
            panic!("the command is invalid")
        };
        let fields: Vec<&str> = errors.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["lines[1].sku", "lines[1].quantity", "request_id"]);
        assert_eq!(cmd.idempotency_key().as_deref(), Some(" "));
    }
}
