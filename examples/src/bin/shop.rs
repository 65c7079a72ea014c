//! A small shop on mink: orders and stock, event-sourced in a SQLite file.
//!
//! Run it from the repository root:
//!
//! ```text
//! cargo run -p mink-examples --bin shop
//! ```
//!
//! It writes `./mink-shop.db`; pass another path as the first argument or in
//! `MINK_SHOP_DB`. Each run starts from an empty file (a previous one is deleted), so the
//! story is the same every time. The code is in `examples/src/shop/`.
//!
//! The store is opened with an outbox: the shop's events reach a webhook receiver that
//! the binary runs on `127.0.0.1` (on a port the system picks), through an outbox
//! processor in the background. Nothing leaves the machine.
//!
//! Two read models are kept beside the events (see `examples/src/shop/views.rs`): order
//! summaries, inline in each append's transaction, and stock levels, by an async
//! projection worker that runs in the background and moves its checkpoint in the
//! transaction of its read-model changes. The story ends by querying both.

use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use mink_es::projection::ops::ProjectionOps;
use mink_es::projection::{AsyncOptions, ProjectionEngine};
use mink_es::readmodel::{Query, ReadModelRepository};
use mink_examples::shop::views::{OrderSummaries, OrderSummary, StockLevel, StockLevels};
use mink_examples::shop::{self, CommandStores, Narrator, webhooks};
use mink_sqlite::{SqliteProjectionTarget, SqliteStore};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os("MINK_SHOP_DB"))
        .map_or_else(|| PathBuf::from("mink-shop.db"), PathBuf::from);

    let mut narrator = Narrator::printing();
    let removed = remove_database(&path)?;
    narrator.say(format!(
        "mink shop, on the SQLite file {} ({})",
        path.display(),
        if removed {
            "starting fresh: the previous file was deleted"
        } else {
            "a new file"
        }
    ));
    // The store writes, in each append's transaction, the outbox messages its routes ask
    // for (the story delivers them to a webhook receiver in this process) and the order
    // summaries (an inline projection).
    let store = SqliteStore::builder(&path)
        .outbox(webhooks::outbox()?)
        .inline(OrderSummaries)?
        .open()
        .with_context(|| format!("cannot open the event store at {}", path.display()))?;

    // The stock levels are kept by an async projection, in the background.
    let control = store.projection_control();
    let mut engine = ProjectionEngine::new(store.clone(), Arc::new(control.clone()));
    engine.add(
        SqliteProjectionTarget::new(&store, StockLevels),
        AsyncOptions {
            poll_interval: Duration::from_millis(20),
            ..AsyncOptions::default()
        },
    )?;
    let cancel = CancellationToken::new();
    let projections = engine.start(cancel.clone());

    shop::run(
        store.clone(),
        CommandStores::sqlite(&store),
        Arc::new(store.outbox_store()),
        &mut narrator,
    )
    .await?;

    // The read models.
    narrator.heading("Read models");
    let orders = ReadModelRepository::<OrderSummary, _>::new(store.read_models());
    orders.ensure_table().await?;
    narrator.say("Order summaries (inline: written in each order's append), largest first:");
    for o in orders.find(&Query::new().order_desc("total_cents")).await? {
        let o = o.model;
        narrator.say(format!(
            "  {:<10} {:<8} {:<10} {:>3} units {:>8.2} {}",
            o.id,
            o.customer,
            o.status,
            o.units,
            o.total_cents as f64 / 100.0,
            o.carrier.as_deref().unwrap_or("")
        ));
    }
    let open = orders
        .count(&Query::new().in_list("status", ["placed", "paid"]))
        .await?;
    narrator.say(format!(
        "  {open} order(s) placed or paid and not yet shipped"
    ));

    let ops = ProjectionOps::new(store.clone(), Arc::new(control));
    let mut caught_up = false;
    for _ in 0..250 {
        let info = ops.list().await?;
        if info
            .iter()
            .all(|i| i.lag_events == 0 && i.status.checkpoint.is_some())
        {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(
        caught_up,
        "the stock projection did not catch up: {:?}",
        ops.list().await?
    );
    let stock = ReadModelRepository::<StockLevel, _>::new(store.read_models());
    stock.ensure_table().await?;
    narrator.say("Stock levels (async: kept by a projection worker with its checkpoint):");
    for s in stock.find(&Query::new()).await? {
        let s = s.model;
        narrator.say(format!(
            "  {:<16} {:>3} available, {:>3} reserved, {:>3} dispatched",
            s.id, s.available, s.reserved, s.dispatched
        ));
    }
    for info in ops.list().await? {
        narrator.say(format!(
            "  projection {}: {}, {} event(s) behind, {} parked",
            info.status.name, info.status.state, info.lag_events, info.parked
        ));
    }
    cancel.cancel();
    projections.shutdown().await;

    narrator.say("");
    narrator.say(format!(
        "The events stay in {}; with the sqlite3 shell, look at them with",
        path.display()
    ));
    narrator.say(format!(
        "  sqlite3 {} \"SELECT position, stream_id, version, event_type, payload, metadata FROM mink_events\"",
        path.display()
    ));
    narrator.say("and at the audit log of the commands with");
    narrator.say(format!(
        "  sqlite3 {} \"SELECT command, aggregate_id, user_id, outcome, error_kind FROM mink_audit ORDER BY seq\"",
        path.display()
    ));
    narrator.say("and at the read models with");
    narrator.say(format!(
        "  sqlite3 {} \"SELECT mink_doc FROM rm_shop_orders\"; sqlite3 {} \"SELECT mink_doc FROM rm_shop_stock\"",
        path.display(),
        path.display()
    ));
    narrator.say("and at the outbox messages, with how their delivery went, with");
    narrator.say(format!(
        "  sqlite3 {} \"SELECT destination, stream_id, event_type, status, attempts, last_error FROM mink_outbox ORDER BY seq\"",
        path.display()
    ));
    Ok(())
}

/// Deletes the database file and its WAL companions; true when there was one.
fn remove_database(path: &std::path::Path) -> anyhow::Result<bool> {
    let mut removed = false;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot delete {}", p.to_string_lossy()));
            }
        }
    }
    Ok(removed)
}
