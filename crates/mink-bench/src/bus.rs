//! BUS: aggregate commands through the command bus and its middleware, against the
//! same handler called directly. Generic over any [`EventStore`], so every backend runs
//! exactly the same code.
//!
//! The command is an account deposit: load the account (replaying its events),
//! decide, save one `Deposited` event with `ExpectedVersion::Exact`. The commands go
//! round-robin over a set of accounts, each awaited before the next (as W1).
//!
//! The implementations ([`Side`]):
//!
//! - `raw`: the handler called directly: the same load / decide / save, through the
//!   same [`Repository`] on the same store type, with the event metadata a dispatch
//!   would give it (a fresh [`CommandContext`]: the command id as causation id).
//! - `mink`: [`CommandBus::dispatch`] of a handler registered with
//!   [`CommandBus::register_aggregate`], through the full middleware stack: Recovery,
//!   Tracing, Logging, Metrics, Correlation, Validation, Timeout, Retry. The bench
//!   installs no `tracing` subscriber and no `metrics` recorder, as a production
//!   application that exports neither would run: spans and log events are disabled at
//!   their call sites, metrics go to the facade's no-op default. Correlation writes a
//!   correlation id into each event's metadata, so these rows are a little longer
//!   than `raw`'s: part of what the stack costs.
//! - `mink-stores`: the same stack plus the middlewares that keep state in the
//!   database: [`Audit`] (fail-closed: a `Started` record before the handler, the
//!   outcome after it) and [`Idempotency`] (a claim before the handler, the result
//!   after it), in the guide's order. Each command then costs several more writes; the
//!   line shows that cost.
//!
//! `run` times only the loop itself; `verify` checks afterwards that every account's
//! stream holds the events the bench saw saved, and for `mink-stores` that the audit
//! log holds two records per command and that a repeated command is replayed from the
//! idempotency store instead of running again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use mink_es::command::audit::{Audit, AuditQuery, AuditStore};
use mink_es::command::idempotency::{Idempotency, IdempotencyStore};
use mink_es::command::middleware::{
    Correlation, Logging, Metrics, Recovery, Retry, Timeout, Tracing, Validation,
};
use mink_es::command::{
    AggregateOutcome, Command, CommandBus, CommandContext, CommandError, ValidationErrors,
};
use mink_es::{Aggregate, EventStore, Repository, StreamId};
use serde::{Deserialize, Serialize};

use crate::common::{Measurement, Sizes, mirrored, split, thread_cpu_time, warmup};
use crate::{Line, Workload};

/// The events of an [`Account`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AccountEvent {
    /// Money came in.
    #[serde(rename = "Deposited")]
    Deposited {
        /// In cents.
        amount: u64,
    },
}

/// The aggregate: an account balance.
#[derive(Default, Debug)]
pub struct Account {
    balance: u64,
}

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Event = AccountEvent;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount } => {
                self.balance = self.balance.saturating_add(*amount);
            }
        }
    }
}

/// The command: deposit `amount` cents into `account`.
#[derive(Serialize, Clone, Debug)]
pub struct Deposit {
    /// The account's id.
    pub account: String,
    /// In cents; must be positive.
    pub amount: u64,
    /// The client's request id (the idempotency key).
    pub request_id: String,
}

impl Command for Deposit {
    const NAME: &'static str = "Deposit";
    type Output = AggregateOutcome;

    fn validate(&self) -> Result<(), ValidationErrors> {
        ValidationErrors::new()
            .require(self.amount > 0, "amount", "must be positive")
            .require(!self.account.is_empty(), "account", "must not be empty")
            .into_result()
    }

    fn idempotency_key(&self) -> Option<String> {
        Some(self.request_id.clone())
    }

    fn aggregate_id(&self) -> Option<String> {
        Some(self.account.clone())
    }
}

/// The decision: one `Deposited` event, unless the balance would overflow.
pub fn decide(account: &Account, cmd: &Deposit) -> Result<Vec<AccountEvent>, &'static str> {
    account
        .balance
        .checked_add(cmd.amount)
        .ok_or("the balance would overflow")?;
    Ok(vec![AccountEvent::Deposited { amount: cmd.amount }])
}

/// The handler called directly: what the handler registered by
/// [`CommandBus::register_aggregate`] does, step for step, without the bus.
pub async fn handle_direct<S: EventStore>(
    repo: &Repository<Account, S>,
    cmd: Deposit,
    ctx: CommandContext,
) -> Result<AggregateOutcome, CommandError> {
    let id = cmd.account.clone();
    let mut root = repo.load(&id).await?;
    let events = decide(root.state(), &cmd).map_err(CommandError::rejected::<Deposit>)?;
    root.record_all(events);
    let result = repo
        .save_with_metadata(&mut root, &ctx.event_metadata())
        .await?;
    Ok(AggregateOutcome::new(id, &result))
}

/// One implementation of the BUS workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The handler called directly.
    Raw,
    /// Through the bus and the full middleware stack.
    Mink,
    /// The stack plus the audit and idempotency middlewares on the backend's stores.
    MinkStores,
}

impl Side {
    /// The `impl=` name of the side.
    pub fn name(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::Mink => "mink",
            Side::MinkStores => "mink-stores",
        }
    }
}

/// The stores of the store-backed middlewares, on the same database as the events.
#[derive(Clone)]
pub struct CommandStores {
    /// For [`Idempotency`].
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// For [`Audit`] (fail-closed).
    pub audit: Arc<dyn AuditStore>,
}

/// The longest a command may take before the `Timeout` middleware fails it: far above
/// any command here, so it never fires; what is measured is its cost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The bus of `mink` (no `stores`) or `mink-stores`, with the deposit handler
/// registered on a repository over `store`.
pub fn bus<S: EventStore>(store: S, stores: Option<&CommandStores>) -> Result<CommandBus> {
    let mut bus = CommandBus::new();
    // The first added is the outermost.
    bus.use_middleware(Recovery)
        .use_middleware(Tracing::new())
        .use_middleware(Logging)
        .use_middleware(Metrics)
        .use_middleware(Correlation::new());
    if let Some(s) = stores {
        bus.use_middleware(Audit::with_store(s.audit.clone()).fail_closed());
    }
    bus.use_middleware(Validation);
    if let Some(s) = stores {
        bus.use_middleware(Idempotency::with_store(s.idempotency.clone()));
    }
    bus.use_middleware(Timeout(COMMAND_TIMEOUT))
        .use_middleware(Retry::default());
    bus.register_aggregate(
        Repository::<Account, _>::new(store),
        |c: &Deposit| c.account.clone(),
        decide,
    )?;
    Ok(bus)
}

/// Where a [`Deposits`] workload sends its commands.
enum Target<S: EventStore> {
    Direct(Repository<Account, S>),
    Bus(CommandBus),
}

/// The BUS workload on one side: deposits round-robin over a set of accounts, each
/// awaited before the next.
pub struct Deposits<S: EventStore> {
    store: S,
    target: Target<S>,
    stores: Option<CommandStores>,
    accounts: Vec<String>,
    versions: Vec<u64>,
    next: usize,
    sent: u64,
    last: Option<(Deposit, AggregateOutcome)>,
}

impl<S: EventStore> Deposits<S> {
    /// A workload of `side` over `accounts` accounts in `store`. `stores` is required
    /// for [`Side::MinkStores`] and ignored otherwise.
    pub fn new(
        store: S,
        side: Side,
        stores: Option<CommandStores>,
        accounts: usize,
    ) -> Result<Self> {
        let stores = match side {
            Side::MinkStores => {
                Some(stores.context("the mink-stores side needs idempotency and audit stores")?)
            }
            _ => None,
        };
        let target = match side {
            Side::Raw => Target::Direct(Repository::new(store.clone())),
            _ => Target::Bus(bus(store.clone(), stores.as_ref())?),
        };
        let accounts = accounts.max(1);
        Ok(Deposits {
            store,
            target,
            stores,
            accounts: (0..accounts).map(|i| format!("acc{i}")).collect(),
            versions: vec![0; accounts],
            next: 0,
            sent: 0,
            last: None,
        })
    }

    /// Runs `commands` commands; returns the commands run and the time taken.
    pub async fn run(&mut self, commands: u64) -> Result<(u64, Duration)> {
        let start = Instant::now();
        let mut last = None;
        for _ in 0..commands {
            let i = self.next;
            self.next = (i + 1) % self.accounts.len();
            let n = self.sent;
            self.sent += 1;
            let cmd = Deposit {
                account: self.accounts[i].clone(),
                amount: 1 + n % 100,
                request_id: format!("req-{n}"),
            };
            let out = match &self.target {
                Target::Direct(repo) => {
                    handle_direct(repo, cmd.clone(), CommandContext::new()).await?
                }
                Target::Bus(bus) => bus.dispatch(cmd.clone()).await?,
            };
            self.versions[i] = out.version;
            last = Some((cmd, out));
        }
        let elapsed = start.elapsed();
        if last.is_some() {
            self.last = last;
        }
        Ok((commands, elapsed))
    }

    /// Checks, outside the timing, that the work was done: every account's stream is
    /// at the version its last command returned and they hold one event per command;
    /// for `mink-stores`, that a repeat of the last command is answered from the
    /// idempotency store (same result, nothing appended) and that the audit log holds
    /// a `Started` and a final record for every command. That repeat is one more
    /// dispatch: call this once, after the last run.
    pub async fn verify(&self) -> Result<()> {
        if let (Some(stores), Some((cmd, out)), Target::Bus(bus)) =
            (&self.stores, &self.last, &self.target)
        {
            let again = bus.dispatch(cmd.clone()).await?;
            ensure!(
                &again == out,
                "a repeated command was not replayed: {again:?} after {out:?}"
            );
            let records = stores
                .audit
                .query(&AuditQuery {
                    command: Some(Deposit::NAME.to_owned()),
                    limit: usize::MAX,
                    ..AuditQuery::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("querying the audit log: {e}"))?;
            // The repeat above is audited too.
            let expected = 2 * (self.sent + 1);
            ensure!(
                records.len() as u64 == expected,
                "the audit log holds {} records, expected {expected}",
                records.len()
            );
        }
        let mut total = 0;
        for (id, &seen) in self.accounts.iter().zip(&self.versions) {
            let stream = StreamId::for_aggregate(Account::TYPE, id)?;
            let v = self.store.stream_version(&stream).await?;
            ensure!(
                v == seen,
                "stream {stream} is at version {v}, the bench saw {seen}"
            );
            total += v;
        }
        ensure!(
            total == self.sent,
            "the store holds {total} deposits, the bench sent {}",
            self.sent
        );
        Ok(())
    }
}

/// One run of `side` on a fresh `store`: warm-up (untimed), `commands` timed
/// commands, then [`Deposits::verify`]. Returns the timed commands and their time, and
/// the CPU time this thread spent on them ([`thread_cpu_time`], when available).
pub async fn one_run<S: EventStore>(
    store: S,
    side: Side,
    stores: Option<CommandStores>,
    sizes: &Sizes,
    commands: u64,
) -> Result<((u64, Duration), Option<Duration>)> {
    let mut w = Deposits::new(store, side, stores, sizes.bus_accounts)?;
    w.run(warmup(commands)).await?;
    let cpu_before = thread_cpu_time();
    let measured = w.run(commands).await?;
    let cpu = thread_cpu_time()
        .zip(cpu_before)
        .map(|(a, b)| a.saturating_sub(b));
    w.verify().await?;
    Ok((measured, cpu))
}

/// Runs per side on the memory and SQLite backends: the mirrored order, twice (raw,
/// mink, mink-stores, mink-stores, mink, raw, raw, …). A command costs tens of
/// microseconds on SQLite, and on a shared machine other processes make that drift by
/// tens of percent from second to second: finer interleaving spreads the drift over
/// every side.
pub const RUNS_PER_SIDE: usize = 4;

/// Runs every side in `sides` [`RUNS_PER_SIDE`] times, in mirrored order, each run with
/// its share of the commands on a fresh store that `open(side, k)` returns (`k`
/// numbers the runs). Returns one measurement per side, in the order of `sides`, and
/// reports on stderr the CPU time per command of each side (the diagnostic of
/// [`thread_cpu_time`]: the stores run inline on this thread).
pub async fn mirrored_runs<S: EventStore>(
    sizes: &Sizes,
    sides: &[Side],
    mut open: impl AsyncFnMut(Side, usize) -> Result<(S, Option<CommandStores>)>,
) -> Result<Vec<(Side, Measurement)>> {
    let parts = split(sizes.bus_commands, RUNS_PER_SIDE);
    let mut out: Vec<(Side, Measurement)> =
        sides.iter().map(|&s| (s, Measurement::default())).collect();
    let mut cpu: Vec<Option<Duration>> = vec![Some(Duration::ZERO); sides.len()];
    let mut seen = vec![0usize; sides.len()];
    let order = mirrored(sides).repeat(RUNS_PER_SIDE / 2);
    for (k, side) in order.into_iter().enumerate() {
        let i = sides.iter().position(|&s| s == side).unwrap_or_default();
        let part = parts[seen[i].min(RUNS_PER_SIDE - 1)];
        seen[i] += 1;
        let (store, stores) = open(side, k).await?;
        let ((commands, elapsed), run_cpu) = one_run(store, side, stores, sizes, part).await?;
        eprintln!(
            "mink-bench:   BUS run {k} ({}): {commands} commands in {:.3} s",
            side.name(),
            elapsed.as_secs_f64()
        );
        out[i].1.add((commands, elapsed));
        cpu[i] = cpu[i].zip(run_cpu).map(|(a, b)| a + b);
    }
    for ((side, m), cpu) in out.iter().zip(&cpu) {
        if let Some(cpu) = cpu.filter(|_| m.events > 0) {
            eprintln!(
                "mink-bench:   BUS {}: {:.1} us of CPU per command on this thread, {:.1} us of wall time",
                side.name(),
                cpu.as_secs_f64() * 1e6 / m.events as f64,
                m.elapsed.as_secs_f64() * 1e6 / m.events as f64
            );
        }
    }
    Ok(out)
}

/// The lines of BUS on `backend`: `raw` first, the others with their ratio to it.
pub fn lines(backend: &'static str, results: &[(Side, Measurement)]) -> Vec<Line> {
    let raw = results
        .iter()
        .find(|(s, _)| *s == Side::Raw)
        .map(|(_, m)| *m);
    results
        .iter()
        .map(|&(side, m)| {
            let line = Line::new(Workload::Bus, backend, side.name(), m);
            match raw {
                Some(raw) if side != Side::Raw => line.against_raw(raw),
                _ => line,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use mink_es::MemoryStore;
    use mink_es::command::audit::MemoryAuditStore;
    use mink_es::command::idempotency::MemoryIdempotencyStore;

    use super::*;

    #[tokio::test]
    async fn every_side_runs_and_verifies() {
        for side in [Side::Raw, Side::Mink, Side::MinkStores] {
            let stores = CommandStores {
                idempotency: Arc::new(MemoryIdempotencyStore::new()),
                audit: Arc::new(MemoryAuditStore::new()),
            };
            let mut w = Deposits::new(MemoryStore::new(), side, Some(stores), 7).unwrap();
            assert_eq!(w.run(30).await.unwrap().0, 30);
            w.verify().await.unwrap();
        }
    }

    #[test]
    fn the_mink_stores_side_needs_its_stores() {
        assert!(Deposits::new(MemoryStore::new(), Side::MinkStores, None, 1).is_err());
    }
}
