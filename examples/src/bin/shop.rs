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

use std::path::PathBuf;

use anyhow::Context;
use mink_examples::shop::{self, CommandStores, Narrator};
use mink_sqlite::SqliteStore;

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
    let store = SqliteStore::open(&path)
        .with_context(|| format!("cannot open the event store at {}", path.display()))?;

    shop::run(store.clone(), CommandStores::sqlite(&store), &mut narrator).await?;

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
