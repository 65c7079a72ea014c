//! The story the `shop` example tells, step by step, on any store.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use mink_es::prelude::*;
use mink_es::subscription::{Subscription, SubscriptionOptions};
use mink_es::{
    EventDecoder, FeedFilter, JsonCodec, Position, ReplayMode, Repository, StoredEvent, StreamId,
};

use super::inventory::InventoryEvent;
use super::lost_reply::LostReply;
use super::order::{Order, OrderError, OrderLine, OrderStatus};
use super::service::{SNAPSHOT_EVERY, Shop, ShopError};

/// The products of the shop: SKU, name, unit price in cents, units delivered at opening.
pub const CATALOGUE: [(&str, &str, u64, u32); 3] = [
    ("KB-01", "mechanical keyboard", 4_999, 10),
    ("MS-02", "wireless mouse", 1_999, 25),
    ("MN-27", "27-inch monitor", 18_900, 3),
];

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
    /// Whether the second clerk's save was refused with a conflict.
    pub conflict_detected: bool,
    /// Whether the second clerk's decision, retried on the reloaded order, was saved.
    pub conflict_retry_saved: bool,
    /// Whether the retried save after the lost reply was recognised as a repeat.
    pub retry_deduplicated: bool,
    /// Events in the retried order's stream after the retry (1 if nothing was stored
    /// twice).
    pub retried_stream_events: u64,
    /// The version of the snapshot of `Inventory-MS-02`, if one was taken.
    pub snapshot_version: Option<u64>,
    /// Events read from the global feed with the `Order` category filter.
    pub order_feed_events: usize,
    /// Events the stock subscription delivered while catching up.
    pub subscription_caught_up: usize,
    /// Events it delivered live, after catching up.
    pub subscription_live: usize,
    /// Events in the store at the end.
    pub events_in_store: u64,
    /// The feed's head position at the end.
    pub head: Position,
}

/// Tells the whole story on `store`, which should be empty, and returns what happened.
pub async fn run<S>(store: S, n: &mut Narrator) -> Result<ShopReport, ShopError>
where
    S: EventStore + SnapshotStore,
{
    let shop = Shop::new(store.clone());
    let mut report = ShopReport::default();
    let price = |sku: &str| CATALOGUE.iter().find(|c| c.0 == sku).map_or(0, |c| c.2);
    let line = |sku: &str, quantity: u32| OrderLine::new(sku, quantity, price(sku));

    // ------------------------------------------------------------------------------
    n.heading("1. The warehouse receives stock");
    for (sku, name, _, units) in CATALOGUE {
        shop.receive_stock(sku, units).await?;
        n.say(format!("received {units:>2} x {sku} ({name})"));
    }

    // ------------------------------------------------------------------------------
    n.heading("2. Orders come in; each reserves its stock");
    shop.place_order("1001", "alice", vec![line("KB-01", 1), line("MS-02", 2)])
        .await?;
    n.say("order 1001 (alice): 1 x KB-01, 2 x MS-02 -> placed, stock reserved");
    shop.place_order("1002", "bob", vec![line("MN-27", 2)])
        .await?;
    n.say("order 1002 (bob):   2 x MN-27           -> placed, stock reserved");
    match shop
        .place_order("1003", "carol", vec![line("MS-02", 1), line("MN-27", 2)])
        .await
    {
        Err(refusal @ ShopError::Stock { .. }) => {
            n.say("order 1003 (carol): 1 x MS-02, 2 x MN-27 -> refused by the stock:");
            say_refusal(n, &mut report, &refusal);
            n.say("  compensation: the MS-02 reservation was released and order 1003 cancelled");
        }
        Err(other) => return Err(other),
        Ok(()) => n.say("order 1003 was accepted (unexpected: only 1 monitor was left)"),
    }

    // ------------------------------------------------------------------------------
    n.heading("3. Business rules say no");
    let total_1002 = shop.orders().load("1002").await?.state().total_cents();
    match shop.ship("1002", "DHL").await {
        Err(refusal @ ShopError::Order { .. }) => {
            n.say("shipping order 1002 before it is paid:");
            say_refusal(n, &mut report, &refusal);
        }
        Err(other) => return Err(other),
        Ok(_) => n.say("order 1002 shipped unpaid (unexpected)"),
    }
    let total_1001 = shop.orders().load("1001").await?.state().total_cents();
    shop.pay("1001", total_1001, "PAY-5521").await?;
    shop.ship("1001", "DHL").await?;
    n.say(format!(
        "order 1001 paid ({}) and shipped; its stock was dispatched",
        money(total_1001)
    ));
    match shop.cancel("1001", "customer asked").await {
        Err(refusal @ ShopError::Order { .. }) => {
            n.say("cancelling order 1001 after it shipped:");
            say_refusal(n, &mut report, &refusal);
        }
        Err(other) => return Err(other),
        Ok(_) => n.say("order 1001 cancelled after shipping (unexpected)"),
    }

    // ------------------------------------------------------------------------------
    n.heading("4. Two clerks change order 1002 at the same time");
    let orders = shop.orders();
    let mut clerk_a = orders.load("1002").await?;
    let mut clerk_b = orders.load("1002").await?;
    n.say(format!(
        "clerk A and clerk B both open order 1002 at version {}",
        clerk_a.version()
    ));
    clerk_a
        .decide(|o| o.pay(total_1002, "PAY-7731"))
        .map_err(|e| order_error("1002", e))?;
    let saved = orders.save(&mut clerk_a).await?;
    n.say(format!(
        "clerk A records the payment ({}) and saves: now at version {}",
        money(total_1002),
        saved.version
    ));
    clerk_b
        .decide(|o| o.cancel("customer changed their mind"))
        .map_err(|e| order_error("1002", e))?;
    n.say("clerk B, still looking at the unpaid order, cancels it (refund: 0.00) and saves:");
    match orders.save(&mut clerk_b).await {
        Err(conflict @ mink_es::Error::Conflict { .. }) => {
            report.conflict_detected = true;
            n.say(format!("  refused: {conflict}"));
        }
        Err(other) => return Err(other.into()),
        Ok(_) => n.say("  saved (unexpected: the order changed under clerk B)"),
    }
    // Reload and decide again: on the fresh state the same command comes out different.
    let mut clerk_b = orders.load("1002").await?;
    let seen = clerk_b.state().status;
    clerk_b
        .decide(|o| o.cancel("customer changed their mind"))
        .map_err(|e| order_error("1002", e))?;
    let saved = orders.save(&mut clerk_b).await?;
    report.conflict_retry_saved = true;
    n.say(format!(
        "clerk B reloads (version {}, status {seen}), decides again and saves: cancelled with a \
         refund of {}, now at version {}",
        saved.version - 1,
        money(clerk_b.state().refund_cents),
        saved.version
    ));
    shop.release_stock_for("1002").await?;
    n.say("the 2 monitors held by order 1002 go back to available stock");

    // ------------------------------------------------------------------------------
    n.heading("5. A save whose reply is lost is retried safely");
    let flaky = LostReply::new(store.clone());
    let orders_via_flaky = Repository::<Order, _>::new(flaky.clone());
    let mut order = orders_via_flaky.load("1004").await?;
    order
        .decide(|o| o.place("dave", vec![line("MS-02", 3)]))
        .map_err(|e| order_error("1004", e))?;
    flaky.lose_next_reply();
    match orders_via_flaky.save(&mut order).await {
        Err(e) if e.is_retryable() => {
            n.say(format!("order 1004 (dave): the save fails with \"{e}\""));
            n.say("  did it commit? the caller cannot know, so it retries the same save");
        }
        Err(other) => return Err(other.into()),
        Ok(_) => n.say("order 1004: the reply was not lost (unexpected)"),
    }
    let retry = orders_via_flaky.save(&mut order).await?;
    let stream = StreamId::for_aggregate("Order", "1004")?;
    report.retry_deduplicated = retry.deduplicated;
    report.retried_stream_events = store.stream_version(&stream).await?;
    n.say(format!(
        "  retry: deduplicated = {}, {stream} holds {} event(s): the first attempt had \
         committed, and the same event ids were not stored twice",
        retry.deduplicated, report.retried_stream_events
    ));
    shop.reserve_stock_for("1004").await?;
    n.say("  order 1004's stock is reserved");

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
    shop.receive_stock("MN-27", 5).await?;
    n.say("a new delivery arrives: 5 x MN-27");
    let event = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .map_err(|_| mink_es::Error::InvalidArgument("no live event within 5 s".into()))??;
    movements.apply(&event)?;
    report.subscription_live += 1;
    n.say(format!(
        "live: {} on {} at position {}; now {movements}",
        event.event_type, event.stream_id, event.position
    ));

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
    report.events_in_store = count_events(&store).await?;
    report.head = store.head_position().await?;
    n.say(format!(
        "events in the store: {}; feed head position: {}",
        report.events_in_store, report.head
    ));
    Ok(report)
}

/// Prints a refused command and records it.
fn say_refusal(n: &mut Narrator, report: &mut ShopReport, refusal: &ShopError) {
    let typed = match refusal {
        ShopError::Order { source, .. } => format!("OrderError::{source:?}"),
        ShopError::Stock { source, .. } => format!("InventoryError::{source:?}"),
        ShopError::Store(e) => format!("{e:?}"),
    };
    n.say(format!("  refused: {refusal}"));
    n.say(format!("           {typed}"));
    report.rule_violations.push(refusal.to_string());
}

fn order_error(id: &str, e: OrderError) -> ShopError {
    ShopError::Order {
        order_id: id.to_owned(),
        source: e,
    }
}

/// Cents as `123.45`.
fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Counts every event of the store by reading the whole feed.
async fn count_events<S: FeedReader>(store: &S) -> Result<u64, mink_es::Error> {
    const PAGE: usize = 256;
    let mut after = Position::START;
    let mut count = 0;
    loop {
        let page = store.read_feed(after, PAGE, &FeedFilter::all()).await?;
        count += page.events.len() as u64;
        after = page.next;
        if page.events.len() < PAGE {
            return Ok(count);
        }
    }
}

/// A read model built from the stock events of the feed: units moved, by kind.
struct StockMovements {
    decoder: EventDecoder<InventoryEvent, JsonCodec>,
    received: u32,
    reserved: u32,
    released: u32,
    dispatched: u32,
}

impl StockMovements {
    fn new() -> Self {
        StockMovements {
            decoder: EventDecoder::new(JsonCodec, ReplayMode::Strict),
            received: 0,
            reserved: 0,
            released: 0,
            dispatched: 0,
        }
    }

    fn apply(&mut self, event: &StoredEvent) -> Result<(), mink_es::Error> {
        match self.decoder.decode(event)? {
            Some(InventoryEvent::Received { quantity }) => self.received += quantity,
            Some(InventoryEvent::Reserved { quantity, .. }) => self.reserved += quantity,
            Some(InventoryEvent::Released { quantity, .. }) => self.released += quantity,
            Some(InventoryEvent::Dispatched { quantity, .. }) => self.dispatched += quantity,
            None => {}
        }
        Ok(())
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
