//! The story the `shop` example tells, step by step, on any store.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use mink_es::command::CommandError;
use mink_es::command::audit::{AuditOutcome, AuditQuery, AuditRecord};
use mink_es::outbox::{MessageStatus, OutboxMessage, OutboxStore};
use mink_es::prelude::*;
use mink_es::subscription::{Subscription, SubscriptionOptions};
use mink_es::{EventDecoder, FeedFilter, Position, ReplayMode, SerdeEvents, StoredEvent, StreamId};

use super::commands::{CancelOrder, PayOrder, PlaceOrder, ReceiveStock, ShipOrder};
use super::faults::Faults;
use super::inventory::InventoryEvent;
use super::order::{OrderLine, OrderStatus};
use super::service::{
    Caller, CommandStores, Dispatched, HandlerRun, SNAPSHOT_EVERY, Shop, ShopError,
};
use super::webhooks::{
    self, DeadLetterSummary, PARTNERS, REFUNDS, UNAVAILABLE_ONCE, WAREHOUSE, WebhookReport,
    Webhooks,
};

/// The products of the shop: SKU, name, unit price in cents, units delivered at opening.
pub const CATALOGUE: [(&str, &str, u64, u32); 3] = [
    ("KB-01", "mechanical keyboard", 4_999, 10),
    ("MS-02", "wireless mouse", 1_999, 25),
    ("MN-27", "27-inch monitor", 18_900, 3),
];

/// How long the story waits for something that happens in the background.
const PATIENCE: Duration = Duration::from_secs(5);

/// Prints the story (or keeps it, for tests).
#[derive(Debug, Default)]
pub struct Narrator {
    echo: bool,
    lines: Vec<String>,
}

impl Narrator {
    /// A narrator that prints each line to stdout as it goes.
    pub fn printing() -> Self {
        Narrator {
            echo: true,
            lines: Vec::new(),
        }
    }

    /// A narrator that only keeps the lines.
    pub fn quiet() -> Self {
        Narrator::default()
    }

    /// Starts a new part of the story.
    pub fn heading(&mut self, title: &str) {
        self.say("");
        self.say(format!("== {title} =="));
    }

    /// Tells one line.
    pub fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        if self.echo {
            // A closed stdout (`shop | head`) is not an error worth stopping the shop for.
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
        self.lines.push(line);
    }

    /// Everything told so far.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}

/// One order in the final summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderSummary {
    /// Who ordered.
    pub customer: String,
    /// Where the order ended.
    pub status: OrderStatus,
    /// Its total, in cents.
    pub total_cents: u64,
    /// What is owed back, in cents.
    pub refund_cents: u64,
    /// Its stream version (number of events).
    pub version: u64,
}

/// One product in the final summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StockLevel {
    /// Units in the warehouse.
    pub on_hand: u32,
    /// Units reserved for orders.
    pub reserved: u32,
    /// Units that can still be sold.
    pub available: u32,
}

/// What happened, for the summary and for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShopReport {
    /// Every order by id.
    pub orders: BTreeMap<String, OrderSummary>,
    /// Every product by SKU.
    pub stock: BTreeMap<String, StockLevel>,
    /// The rule violations met, as printed.
    pub rule_violations: Vec<String>,
    /// The commands refused by validation, as printed.
    pub invalid_commands: Vec<String>,
    /// Whether clerk B's cancellation met a conflict on its first run.
    pub conflict_detected: bool,
    /// Whether the retry middleware's next run of it, on the reloaded order, was saved.
    pub conflict_retry_saved: bool,
    /// How each run of clerk B's cancellation ended (`conflict`, then `ok`).
    pub conflict_attempts: Vec<String>,
    /// Whether the save repeated after the lost reply was recognised as a repeat.
    pub retry_deduplicated: bool,
    /// Events in the order's stream after the repeat (1 if nothing was stored twice).
    pub retried_stream_events: u64,
    /// Whether the duplicate `PlaceOrder` (same request id) got the original result.
    pub duplicate_replayed: bool,
    /// How often the handler of that `PlaceOrder` ran, for both dispatches together.
    pub duplicate_handler_runs: usize,
    /// The version of the snapshot of `Inventory-MS-02`, if one was taken.
    pub snapshot_version: Option<u64>,
    /// Events read from the global feed with the `Order` category filter.
    pub order_feed_events: usize,
    /// Events the stock subscription delivered while catching up.
    pub subscription_caught_up: usize,
    /// Events it delivered live, after catching up.
    pub subscription_live: usize,
    /// Stored events whose metadata names a correlation id, a causation id and a user.
    pub events_with_provenance: u64,
    /// The audit entries of one user (carol), as queried.
    pub audit_sample: Vec<AuditRecord>,
    /// Every command dispatched, in the order they ended.
    pub dispatched: Vec<Dispatched>,
    /// Every run of a handler, in the order they ended.
    pub handler_runs: Vec<HandlerRun>,
    /// Events in the store at the end.
    pub events_in_store: u64,
    /// The feed's head position at the end.
    pub head: Position,
    /// What the outbox delivered to the webhook receiver.
    pub webhooks: WebhookReport,
}

/// Hands out client request ids: `req-001`, `req-002`, …
#[derive(Debug, Default)]
struct RequestIds(u32);

impl RequestIds {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("req-{:03}", self.0)
    }
}

/// Tells the whole story on `store`, which should be empty, keeping idempotency keys
/// and the audit log in `stores`, and returns what happened.
///
/// `store` must have been opened with the shop's outbox routes ([`webhooks::outbox`]),
/// and `outbox` is where it keeps their messages (`SqliteStore::outbox_store`,
/// `MemoryStore::outbox_store`): an outbox processor delivers them in the background,
/// for the whole story, to a webhook receiver on `127.0.0.1`; part 10 shows what arrived
/// and stops both.
pub async fn run<S>(
    store: S,
    stores: CommandStores,
    outbox: Arc<dyn OutboxStore>,
    n: &mut Narrator,
) -> Result<ShopReport, ShopError>
where
    S: EventStore + SnapshotStore,
{
    // The shop runs on the store through a fault injector that does nothing until the
    // story arms it (parts 4 and 5).
    let faults = Faults::new(store.clone());
    let shop = Shop::new(faults.clone(), stores)?;
    let mut report = ShopReport::default();
    let mut request = RequestIds::default();
    let price = |sku: &str| CATALOGUE.iter().find(|c| c.0 == sku).map_or(0, |c| c.2);
    let line = |sku: &str, quantity: u32| OrderLine::new(sku, quantity, price(sku));

    let warehouse = Caller::user("warehouse");
    // Alice's checkout: her commands share one correlation id.
    let alice = Caller::user("alice").with_correlation_id("checkout-1001");
    let bob = Caller::user("bob");
    let carol = Caller::user("carol");
    let dave = Caller::user("dave");
    let clerk_a = Caller::user("clerk-a");
    let clerk_b = Caller::user("clerk-b");

    n.say(
        "Every change below is a command, dispatched through one bus: recovery, tracing, \
         logging, metrics, correlation, audit (fail-closed), validation, idempotency, \
         timeout, retry.",
    );
    // Partners hear about it through webhooks, delivered in the background all along.
    let webhooks = Webhooks::start(outbox).await?;
    report.webhooks.receiver = webhooks.receiver().base_url();
    n.say(format!(
        "Partners hear about it through webhooks: each append also writes outbox messages \
         for its events, in the same transaction, and an outbox processor delivers them in \
         the background to a webhook receiver at {} (see part 10).",
        report.webhooks.receiver
    ));

    // ------------------------------------------------------------------------------
    n.heading("1. The warehouse receives stock");
    for (sku, name, _, units) in CATALOGUE {
        let cmd = ReceiveStock {
            sku: sku.into(),
            quantity: units,
            request_id: request.next(),
        };
        shop.dispatch(cmd, &warehouse).await?;
        n.say(format!("received {units:>2} x {sku} ({name})"));
    }

    // ------------------------------------------------------------------------------
    n.heading("2. Orders come in; each reserves its stock");
    let place =
        |order_id: &str, customer: &str, lines: Vec<OrderLine>, request_id: String| PlaceOrder {
            order_id: order_id.into(),
            customer: customer.into(),
            lines,
            request_id,
        };
    let cmd = place(
        "1001",
        "alice",
        vec![line("KB-01", 1), line("MS-02", 2)],
        request.next(),
    );
    shop.dispatch(cmd, &alice).await?;
    n.say("order 1001 (alice): 1 x KB-01, 2 x MS-02 -> placed, stock reserved");
    let cmd = place("1002", "bob", vec![line("MN-27", 2)], request.next());
    shop.dispatch(cmd, &bob).await?;
    n.say("order 1002 (bob):   2 x MN-27           -> placed, stock reserved");

    let cmd = place(
        "1003",
        "carol",
        vec![line("MS-02", 1), line("MN-27", 0)],
        request.next(),
    );
    match shop.dispatch(cmd, &carol).await {
        Err(ShopError::Command(invalid @ CommandError::Invalid { .. })) => {
            n.say("order 1003 (carol): 1 x MS-02, 0 x MN-27 -> invalid, no handler ran:");
            n.say(format!("  {invalid}"));
            report.invalid_commands.push(invalid.to_string());
        }
        Err(other) => return Err(other),
        Ok(_) => n.say("order 1003 with 0 monitors was accepted (unexpected)"),
    }
    let cmd = place(
        "1003",
        "carol",
        vec![line("MS-02", 1), line("MN-27", 2)],
        request.next(),
    );
    match shop.dispatch(cmd, &carol).await {
        Err(refusal @ ShopError::Stock { .. }) => {
            n.say("order 1003 (carol): 1 x MS-02, 2 x MN-27 -> refused by the stock:");
            say_refusal(n, &mut report, &refusal);
            n.say("  compensation: the MS-02 reservation was released and order 1003 cancelled");
        }
        Err(other) => return Err(other),
        Ok(_) => n.say("order 1003 was accepted (unexpected: only 1 monitor was left)"),
    }

    // ------------------------------------------------------------------------------
    n.heading("3. Business rules say no");
    let total_1002 = shop.orders().load("1002").await?.state().total_cents();
    let ship = |order_id: &str, request_id: String| ShipOrder {
        order_id: order_id.into(),
        carrier: "DHL".into(),
        request_id,
    };
    match shop
        .dispatch(ship("1002", request.next()), &warehouse)
        .await
    {
        Err(refusal @ ShopError::Order { .. }) => {
            n.say("shipping order 1002 before it is paid:");
            say_refusal(n, &mut report, &refusal);
        }
        Err(other) => return Err(other),
        Ok(_) => n.say("order 1002 shipped unpaid (unexpected)"),
    }
    let total_1001 = shop.orders().load("1001").await?.state().total_cents();
    let pay = PayOrder {
        order_id: "1001".into(),
        amount_cents: total_1001,
        payment_ref: "PAY-5521".into(),
        request_id: request.next(),
    };
    shop.dispatch(pay, &alice).await?;
    shop.dispatch(ship("1001", request.next()), &warehouse)
        .await?;
    n.say(format!(
        "order 1001 paid ({}) and shipped; its stock was dispatched",
        money(total_1001)
    ));
    let cancel = |order_id: &str, reason: &str, request_id: String| CancelOrder {
        order_id: order_id.into(),
        reason: reason.into(),
        request_id,
    };
    match shop
        .dispatch(cancel("1001", "customer asked", request.next()), &clerk_b)
        .await
    {
        Err(refusal @ ShopError::Order { .. }) => {
            n.say("cancelling order 1001 after it shipped:");
            say_refusal(n, &mut report, &refusal);
        }
        Err(other) => return Err(other),
        Ok(_) => n.say("order 1001 cancelled after shipping (unexpected)"),
    }

    // ------------------------------------------------------------------------------
    n.heading("4. Two clerks change order 1002 at the same time");
    // Clerk B's save is held at the door until clerk A has saved, as if B were slower.
    let seen = shop.orders().load("1002").await?.version();
    let mut held = faults.hold_next_append(StreamId::for_aggregate("Order", "1002")?);
    let cancel_1002 = cancel("1002", "customer changed their mind", request.next());
    let clerk_b_task = {
        let shop = shop.clone();
        let clerk_b = clerk_b.clone();
        tokio::spawn(async move { shop.dispatch(cancel_1002, &clerk_b).await })
    };
    if !tokio::time::timeout(PATIENCE, held.reached())
        .await
        .unwrap_or(false)
    {
        return Err(ShopError::Story(
            "clerk B's cancellation never reached its save".into(),
        ));
    }
    n.say(format!(
        "clerk B cancels order 1002: the command loads it (version {seen}, unpaid), decides \
         to cancel it with a refund of 0.00, and is about to save..."
    ));
    let pay = PayOrder {
        order_id: "1002".into(),
        amount_cents: total_1002,
        payment_ref: "PAY-7731".into(),
        request_id: request.next(),
    };
    let paid = shop.dispatch(pay, &clerk_a).await?;
    n.say(format!(
        "...when clerk A's payment ({}) is saved first: order 1002 is now at version {}",
        money(total_1002),
        paid.version
    ));
    held.release();
    let cancelled = clerk_b_task
        .await
        .map_err(|e| ShopError::Story(format!("clerk B's task failed: {e}")))??;
    let runs: Vec<HandlerRun> = shop
        .handler_runs()
        .into_iter()
        .filter(|r| r.command == "CancelOrder" && r.aggregate_id.as_deref() == Some("1002"))
        .collect();
    for r in &runs {
        report.conflict_attempts.push(r.outcome.to_owned());
        if r.outcome == "conflict" {
            report.conflict_detected = true;
            n.say(format!(
                "  clerk B's run {}: {}",
                r.attempt,
                r.error.as_deref().unwrap_or("conflict")
            ));
        }
    }
    let order_1002 = shop.orders().load("1002").await?;
    report.conflict_retry_saved = order_1002.state().status == OrderStatus::Cancelled;
    n.say(format!(
        "  the retry middleware runs the command again: it reloads the order (version {}, \
         paid) and decides again: cancelled with a refund of {}, now at version {}",
        paid.version,
        money(order_1002.state().refund_cents),
        cancelled.order_version
    ));
    n.say("  in the same command, the 2 monitors held by order 1002 go back to available stock");

    // ------------------------------------------------------------------------------
    n.heading("5. A lost reply, and a command sent twice");
    let place_1004 = place("1004", "dave", vec![line("MS-02", 3)], request.next());
    faults.lose_next_reply();
    let first = shop.dispatch(place_1004.clone(), &dave).await?;
    let stream = StreamId::for_aggregate("Order", "1004")?;
    let lost = faults.lost_reply();
    report.retry_deduplicated = lost
        .as_ref()
        .is_some_and(|l| l.stream == stream && l.repeat_deduplicated == Some(true));
    report.retried_stream_events = store.stream_version(&stream).await?;
    n.say(format!(
        "order 1004 (dave): the store commits the order, then the reply is lost ({})",
        lost.as_ref()
            .map_or("unexpectedly, it was not", |l| l.error.as_str())
    ));
    n.say("  did it commit? the handler cannot know, so it sends the same save again");
    n.say(format!(
        "  repeat: deduplicated = {}, {stream} holds {} event(s): the first attempt had \
         committed, and the same event ids were not stored twice",
        report.retry_deduplicated, report.retried_stream_events
    ));
    n.say(format!(
        "  order 1004 placed, its stock reserved ({} events stored)",
        first.events.len()
    ));
    n.say("dave's browser never saw the answer, and sends the same PlaceOrder again (same request id):");
    let second = shop.dispatch(place_1004, &dave).await?;
    report.duplicate_replayed = second == first;
    report.duplicate_handler_runs = shop
        .handler_runs()
        .iter()
        .filter(|r| r.command == "PlaceOrder" && r.aggregate_id.as_deref() == Some("1004"))
        .count();
    n.say(format!(
        "  the idempotency middleware answers with the stored result: {} (the same event ids \
         and positions); the handler ran {} time(s)",
        if report.duplicate_replayed {
            "identical to the first"
        } else {
            "a different one (unexpected)"
        },
        report.duplicate_handler_runs
    ));

    // ------------------------------------------------------------------------------
    n.heading("6. Snapshots");
    let ms02 = StreamId::for_aggregate("Inventory", "MS-02")?;
    report.snapshot_version = store.load_snapshot(&ms02).await?.map(|s| s.version);
    let loaded = shop.stock().load("MS-02").await?;
    match report.snapshot_version {
        Some(v) => n.say(format!(
            "{ms02} has a snapshot at version {v} (one every {SNAPSHOT_EVERY} events): loading it \
             read the snapshot plus {} newer event(s), up to version {}",
            loaded.version() - v,
            loaded.version()
        )),
        None => n.say(format!("{ms02} has no snapshot yet")),
    }

    // ------------------------------------------------------------------------------
    n.heading("7. The global feed, filtered to the Order category");
    let filter = FeedFilter::all().category("Order");
    let mut after = Position::START;
    loop {
        const PAGE: usize = 4;
        let page = store.read_feed(after, PAGE, &filter).await?;
        for e in &page.events {
            n.say(format!(
                "  position {:>2}  {:<10}  v{}  {}",
                e.position.to_string(),
                e.stream_id.as_str(),
                e.version,
                e.event_type
            ));
        }
        report.order_feed_events += page.events.len();
        after = page.next;
        if page.events.len() < PAGE {
            break; // A short page: the feed is read up to its head.
        }
    }
    n.say(format!(
        "{} order events, read in pages of 4",
        report.order_feed_events
    ));

    // ------------------------------------------------------------------------------
    n.heading("8. A subscription catches up, then follows live");
    let mut movements = StockMovements::new();
    let mut sub = Subscription::new(
        store.clone(),
        SubscriptionOptions::category("Inventory")
            .batch_size(5)
            .poll_interval(Duration::from_millis(50)),
    );
    while let Some(event) = sub.try_next().await? {
        movements.apply(&event)?;
        report.subscription_caught_up += 1;
    }
    n.say(format!(
        "the stock-movements projection caught up on {} past events (checkpoint {}): {movements}",
        report.subscription_caught_up,
        sub.checkpoint()
    ));
    let delivery = ReceiveStock {
        sku: "MN-27".into(),
        quantity: 5,
        request_id: request.next(),
    };
    shop.dispatch(delivery, &warehouse).await?;
    n.say("a new delivery arrives: 5 x MN-27");
    let event = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .map_err(|_| ShopError::Story("no live event within 5 s".into()))??;
    movements.apply(&event)?;
    report.subscription_live += 1;
    n.say(format!(
        "live: {} on {} at position {}; now {movements}",
        event.event_type, event.stream_id, event.position
    ));

    // ------------------------------------------------------------------------------
    n.heading("9. Who did what: event metadata and the audit log");
    report.dispatched = shop.dispatched();
    report.handler_runs = shop.handler_runs();
    let command_of = |causation: Option<&str>| {
        report
            .dispatched
            .iter()
            .find(|d| Some(d.command_id.to_string().as_str()) == causation)
            .map_or("?", |d| d.command)
    };
    n.say("Order-1001's events, with their metadata:");
    let order_1001 = StreamId::for_aggregate("Order", "1001")?;
    for e in store.read_stream(&order_1001, 1, 100).await? {
        let m = &e.metadata;
        n.say(format!(
            "  v{} {:<13} user {:<9}  correlation {:<36}  causation {} ({})",
            e.version,
            e.event_type.as_str(),
            m.user_id().unwrap_or("-"),
            m.correlation_id().unwrap_or("-"),
            m.causation_id().unwrap_or("-"),
            command_of(m.causation_id())
        ));
    }
    n.say(
        "  the causation id is the id of the command that stored the event; alice's checkout \
         brought its own correlation id, the warehouse's shipment got a fresh one",
    );
    let all_events = read_all(&store).await?;
    report.events_with_provenance = all_events
        .iter()
        .filter(|e| {
            let m = &e.metadata;
            m.correlation_id().is_some() && m.causation_id().is_some() && m.user_id().is_some()
        })
        .count() as u64;
    n.say(format!(
        "{} of the {} stored events carry a correlation id, a causation id and a user",
        report.events_with_provenance,
        all_events.len()
    ));
    let query = AuditQuery {
        user_id: Some("carol".into()),
        ..AuditQuery::default()
    };
    report.audit_sample = shop.audit().query(&query).await.map_err(ShopError::Audit)?;
    // A command's "started" and final entries share their start time; put "started" first.
    report.audit_sample.sort_by_key(|r| {
        (
            r.started_at,
            r.command_id,
            r.outcome != AuditOutcome::Started,
        )
    });
    n.say("the audit log, queried by user carol (fail-closed: a \"started\" entry is written before a command runs):");
    for r in &report.audit_sample {
        let outcome = match &r.outcome {
            AuditOutcome::Failed { kind, .. } => format!("failed: {kind}"),
            other => other.label().to_owned(),
        };
        n.say(format!(
            "  {}  {:<11} {:<5} {outcome}",
            r.started_at.format("%H:%M:%S%.3f"),
            r.command,
            r.aggregate_id.as_deref().unwrap_or("-"),
        ));
    }

    // ------------------------------------------------------------------------------
    n.heading("10. Partners hear about it: the outbox delivers webhooks");
    tell_webhooks(&store, webhooks, &mut report.webhooks, n).await?;

    // ------------------------------------------------------------------------------
    n.heading("Summary");
    n.say("orders:");
    for id in ["1001", "1002", "1003", "1004"] {
        let o = shop.orders().load(id).await?;
        let s = o.state();
        let refund = if s.refund_cents > 0 {
            format!(", refund {}", money(s.refund_cents))
        } else {
            String::new()
        };
        n.say(format!(
            "  {id}  {:<6} {:<9}  total {:>7}{refund}",
            s.customer,
            s.status.to_string(),
            money(s.total_cents())
        ));
        report.orders.insert(
            id.to_owned(),
            OrderSummary {
                customer: s.customer.clone(),
                status: s.status,
                total_cents: s.total_cents(),
                refund_cents: s.refund_cents,
                version: o.version(),
            },
        );
    }
    n.say("stock:");
    for (sku, name, _, _) in CATALOGUE {
        let s = shop.stock().load(sku).await?;
        let level = StockLevel {
            on_hand: s.state().on_hand,
            reserved: s.state().reserved(),
            available: s.state().available(),
        };
        n.say(format!(
            "  {sku}  on hand {:>2}, reserved {:>2}, available {:>2}  ({name})",
            level.on_hand, level.reserved, level.available
        ));
        report.stock.insert(sku.to_owned(), level);
    }
    report.dispatched = shop.dispatched();
    report.handler_runs = shop.handler_runs();
    let failed = report
        .dispatched
        .iter()
        .filter(|d| d.outcome != "ok")
        .count();
    n.say(format!(
        "commands: {} dispatched ({failed} refused), {} handler runs",
        report.dispatched.len(),
        report.handler_runs.len()
    ));
    report.events_in_store = read_all(&store).await?.len() as u64;
    report.head = store.head_position().await?;
    n.say(format!(
        "events in the store: {}; feed head position: {}",
        report.events_in_store, report.head
    ));
    let counts = report.webhooks.counts;
    n.say(format!(
        "outbox messages: {} delivered, {} pending, {} dead",
        counts.delivered, counts.pending, counts.dead
    ));
    Ok(report)
}

/// Part 10: what the outbox delivered, a retry, a redelivery the receiver de-duplicates,
/// and a dead letter replayed; then the processor and the receiver stop.
async fn tell_webhooks<S: EventStore>(
    store: &S,
    webhooks: Webhooks,
    r: &mut WebhookReport,
    n: &mut Narrator,
) -> Result<(), ShopError> {
    let outbox = webhooks.outbox().clone();
    r.counts_before_replay = webhooks.settle().await?;
    // The messages the routes wrote, worked out again from the stored events (a message's
    // id comes from its event's id and its destination, so these are the same ids), and
    // counted when the outbox holds them.
    let messages = webhooks::outbox()?.messages_for(&read_all(store).await?)?;
    for m in &messages {
        if outbox.status(m.id).await?.is_some() {
            *r.routed.entry(m.destination.clone()).or_default() += 1;
        }
    }
    let routed = |d: &str| r.routed.get(d).copied().unwrap_or(0);
    n.say(format!(
        "the appends wrote {} outbox messages: {} for {PARTNERS} (order events), {} for \
         {WAREHOUSE} (stock events), {} for {REFUNDS} (cancellations that owe a refund)",
        r.routed.values().sum::<usize>(),
        routed(PARTNERS),
        routed(WAREHOUSE),
        routed(REFUNDS)
    ));
    let find = |destination: &str, stream: &str, event_type: &str| {
        messages.iter().find(|m| {
            m.destination == destination
                && m.stream_id.as_str() == stream
                && m.event_type == event_type
        })
    };
    let requests = webhooks.receiver().requests();
    let answers = |id: &str| -> Vec<String> {
        requests
            .iter()
            .filter(|q| q.webhook_id == id)
            .map(|q| q.handling.to_string())
            .collect()
    };

    let mut to_partners: Vec<&OutboxMessage> = messages
        .iter()
        .filter(|m| m.destination == PARTNERS)
        .collect();
    to_partners.sort_by(|a, b| {
        (a.stream_id.as_str(), a.stream_version).cmp(&(b.stream_id.as_str(), b.stream_version))
    });
    n.say(format!(
        "{PARTNERS} received these, {}:",
        if webhooks::in_stream_order(&requests) {
            "each order's messages in the order of its stream"
        } else {
            "but NOT each order's messages in the order of its stream (unexpected)"
        }
    ));
    n.say("  webhook-id                            stream      v  event           status");
    for m in to_partners {
        n.say(format!(
            "  {}  {:<10}  {}  {:<14}  {}",
            m.id,
            m.stream_id.as_str(),
            m.stream_version,
            m.event_type,
            status_of(outbox.as_ref(), m).await?
        ));
    }
    let mut warehouse_attempts = 0;
    let mut warehouse_delivered = 0;
    for m in messages.iter().filter(|m| m.destination == WAREHOUSE) {
        if let Some((status, attempts)) = outbox.status(m.id).await? {
            warehouse_attempts += attempts;
            warehouse_delivered += usize::from(status == MessageStatus::Delivered);
        }
    }
    n.say(format!(
        "{WAREHOUSE} received {warehouse_delivered} of its {} stock messages, in {warehouse_attempts} attempts",
        routed(WAREHOUSE)
    ));

    // The retry.
    let flaky = find(
        UNAVAILABLE_ONCE.destination,
        UNAVAILABLE_ONCE.stream,
        UNAVAILABLE_ONCE.event_type,
    )
    .ok_or_else(|| ShopError::Story("no message for order 1001's OrderPlaced".into()))?;
    r.retried_id = Some(flaky.id.to_string());
    n.say(format!(
        "a retry: the {PARTNERS}' receiver was briefly unavailable when {}'s {} first arrived",
        flaky.stream_id, flaky.event_type
    ));
    for (i, answer) in answers(&flaky.id.to_string()).iter().enumerate() {
        n.say(format!(
            "  attempt {}: webhook-id {} -> {answer}",
            i + 1,
            flaky.id
        ));
    }
    n.say("  the processor retried after a short backoff, with the same webhook-id: one message, two attempts");

    // A redelivery, de-duplicated.
    let paid = find(PARTNERS, "Order-1001", "OrderPaid")
        .ok_or_else(|| ShopError::Story("no message for order 1001's OrderPaid".into()))?;
    r.duplicate_id = Some(paid.id.to_string());
    n.say(
        "a redelivery: delivery is at least once (a processor that dies after posting a message \
         but before marking it delivered posts it again), so Order-1001's OrderPaid is posted again:",
    );
    webhooks
        .publisher()
        .deliver(paid)
        .await
        .map_err(|e| ShopError::Webhooks(Box::new(e)))?;
    let again = webhooks.receiver().requests();
    if let Some(q) = again
        .iter()
        .rev()
        .find(|q| q.webhook_id == paid.id.to_string())
    {
        n.say(format!(
            "  webhook-id {} -> {}: the receiver keeps the ids it processed, so alice's payment \
             is not booked twice",
            q.webhook_id, q.handling
        ));
    }

    // A dead letter, replayed.
    let dead = outbox.dead_letters(10).await?;
    n.say(format!(
        "a dead letter: the {REFUNDS} endpoint answered 400, a permanent failure, so the message \
         went straight to the dead-letter queue; OutboxStore::dead_letters lists {}:",
        dead.len()
    ));
    for d in &dead {
        let m = &d.message;
        n.say(format!(
            "  {}  {} <- {} v{} {}, {}",
            m.id,
            m.destination,
            m.stream_id,
            m.stream_version,
            m.event_type,
            attempts(d.attempts)
        ));
        n.say(format!("    last error: {}", d.last_error));
        r.dead_letters.push(DeadLetterSummary {
            id: m.id.to_string(),
            destination: m.destination.clone(),
            stream_id: m.stream_id.to_string(),
            event_type: m.event_type.clone(),
            attempts: d.attempts,
            last_error: d.last_error.clone(),
        });
    }
    webhooks.receiver().fix_refunds();
    for d in &dead {
        r.replayed += outbox.replay(Some(d.message.id)).await?;
    }
    n.say(format!(
        "the {REFUNDS} service fixes its endpoint, and OutboxStore::replay puts {} back in line",
        if r.replayed == 1 {
            "the message".to_owned()
        } else {
            format!("{} messages", r.replayed)
        }
    ));
    webhooks.settle().await?;
    let requests = webhooks.receiver().requests();
    for d in &dead {
        let answers: Vec<String> = requests
            .iter()
            .filter(|q| q.webhook_id == d.message.id.to_string())
            .map(|q| q.handling.status().as_u16().to_string())
            .collect();
        n.say(format!(
            "  webhook-id {}: answered {} (the same id after the replay); now {} (a replay \
             counts afresh)",
            d.message.id,
            answers.join(", then "),
            status_of(outbox.as_ref(), &d.message).await?
        ));
    }

    // Every request was signed; the processor and the receiver stop.
    let verified = requests.iter().filter(|q| q.verified).count();
    let processed = requests
        .iter()
        .filter(|q| q.handling == webhooks::Handling::Processed)
        .count();
    n.say(format!(
        "the receiver got {} requests, {verified} of them signed with the secret generated at \
         start (checked with mink_webhook::verify); it processed {processed} messages, each once",
        requests.len()
    ));
    r.requests = requests;
    webhooks.shutdown().await?;
    r.counts = outbox.counts().await?;
    n.say(format!(
        "the processor finished its round and stopped, the receiver closed; the outbox holds \
         {} delivered, {} pending, {} dead",
        r.counts.delivered, r.counts.pending, r.counts.dead
    ));
    Ok(())
}

/// `1 attempt`, `2 attempts`.
fn attempts(n: u32) -> String {
    format!("{n} attempt{}", if n == 1 { "" } else { "s" })
}

/// `delivered after 2 attempts`, and the like.
async fn status_of(outbox: &dyn OutboxStore, m: &OutboxMessage) -> Result<String, ShopError> {
    Ok(match outbox.status(m.id).await? {
        Some((status, attempts)) => {
            let status = match status {
                MessageStatus::Pending => "pending",
                MessageStatus::Delivered => "delivered",
                MessageStatus::Dead => "dead",
            };
            format!("{status} after {}", self::attempts(attempts))
        }
        None => "not in the outbox".into(),
    })
}

/// Prints a refused command and records it.
fn say_refusal(n: &mut Narrator, report: &mut ShopReport, refusal: &ShopError) {
    let typed = match refusal {
        ShopError::Order { source, .. } => format!("OrderError::{source:?}"),
        ShopError::Stock { source, .. } => format!("InventoryError::{source:?}"),
        other => format!("{other:?}"),
    };
    n.say(format!("  refused: {refusal}"));
    n.say(format!("           {typed}"));
    report.rule_violations.push(refusal.to_string());
}

/// Cents as `123.45`.
fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Reads every event of the store, in feed order.
pub async fn read_all<S: FeedReader>(store: &S) -> Result<Vec<StoredEvent>, mink_es::Error> {
    const PAGE: usize = 256;
    let mut after = Position::START;
    let mut events = Vec::new();
    loop {
        let page = store.read_feed(after, PAGE, &FeedFilter::all()).await?;
        let n = page.events.len();
        events.extend(page.events);
        after = page.next;
        if n < PAGE {
            return Ok(events);
        }
    }
}

/// A read model built from the stock events of the feed: units moved, by kind.
struct StockMovements {
    decoder: EventDecoder<InventoryEvent, SerdeEvents>,
    received: u32,
    reserved: u32,
    released: u32,
    dispatched: u32,
}

impl StockMovements {
    fn new() -> Self {
        StockMovements {
            decoder: EventDecoder::new(SerdeEvents::default(), ReplayMode::Strict),
            received: 0,
            reserved: 0,
            released: 0,
            dispatched: 0,
        }
    }

    fn apply(&mut self, event: &StoredEvent) -> Result<(), mink_es::Error> {
        self.decoder.decode_each(event, |e| match e {
            InventoryEvent::Received { quantity } => self.received += quantity,
            InventoryEvent::Reserved { quantity, .. } => self.reserved += quantity,
            InventoryEvent::Released { quantity, .. } => self.released += quantity,
            InventoryEvent::Dispatched { quantity, .. } => self.dispatched += quantity,
        })
    }
}

impl std::fmt::Display for StockMovements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} units received, {} reserved, {} released, {} dispatched",
            self.received, self.reserved, self.released, self.dispatched
        )
    }
}
