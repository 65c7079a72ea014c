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

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use mink_examples::shop::{self, CommandStores, Narrator, webhooks};
use mink_sqlite::{SqliteConfig, SqliteStore};

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
    // The store writes the outbox messages its routes ask for in each append's
    // transaction; the story delivers them to a webhook receiver in this process.
    let store = SqliteStore::open_with_outbox(&path, SqliteConfig::default(), webhooks::outbox()?)
        .with_context(|| format!("cannot open the event store at {}", path.display()))?;

    shop::run(
        store.clone(),
        CommandStores::sqlite(&store),
        Arc::new(store.outbox_store()),
        &mut narrator,
    )
    .await?;

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
