//! `mink-bench`: mink's throughput on four workloads, side by side with the same work
//! done through the raw database driver, measured in the same run.
//!
//! ```text
//! cargo run -p mink-bench --release                         # everything (15-30 s)
//! cargo run -p mink-bench --release -- --quick              # CI smoke run (seconds)
//! cargo run -p mink-bench --release -- --backend sqlite --workload W3
//! MINK_POSTGRES_URL=postgres://… cargo run -p mink-bench --release -- --backend postgres
//! ```
//!
//! Workloads (see `--help` for the sizes):
//!
//! - **W1**: sequential single-event appends round-robin over 1,000 streams, each
//!   awaited before the next, with `ExpectedVersion::Exact` (the aggregate case).
//! - **W2**: the same with 100 events per append.
//! - **W3**: reading one 10,000-event stream whole, repeatedly.
//! - **W4**: 8 concurrent tasks, each appending single events to its own streams.
//!
//! Every workload prints one line per implementation on stdout, and nothing else goes
//! to stdout:
//!
//! ```text
//! workload=W1 backend=sqlite impl=raw events_per_s=13000
//! workload=W1 backend=sqlite impl=mink events_per_s=12345 ratio_to_raw=0.95
//! ```
//!
//! Raw lines carry no ratio; the memory backend has no raw baseline. Every figure comes
//! from `std::time::Instant` around the timed loops. Progress goes to stderr.
//!
//! Fairness (see `src/sqlite/mod.rs`): each side's share of a workload is split into
//! two runs done in ABBA order (raw, mink, mink, raw); each run has a fresh database
//! file and its own connections, the same warm-up (a tenth of its work, at most 1,000
//! units, untimed), and only one side's connections are open at a time. Events/s is
//! total events over total timed time. The memory backend times one run, after a
//! warm-up, on a fresh store.

mod common;
mod memory;
mod postgres;
mod sqlite;
mod workloads;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, ValueEnum};

use common::{Measurement, Sizes};

/// Which backends to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// `mink_es::MemoryStore` (no raw baseline).
    Memory,
    /// `mink_sqlite::SqliteStore`, against raw rusqlite.
    Sqlite,
    /// `mink_postgres::PgEventStore`, against raw sqlx (needs `MINK_POSTGRES_URL`).
    Postgres,
    /// Memory and SQLite, and PostgreSQL when `MINK_POSTGRES_URL` is set.
    All,
}

/// One workload (or all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WorkloadArg {
    /// Sequential single-event appends.
    #[value(name = "W1")]
    W1,
    /// Sequential appends of batches of events.
    #[value(name = "W2")]
    W2,
    /// Loading one long stream.
    #[value(name = "W3")]
    W3,
    /// Concurrent single-event appends.
    #[value(name = "W4")]
    W4,
    /// All four.
    #[value(name = "all")]
    All,
}

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Sequential single-event appends.
    W1,
    /// Sequential batched appends.
    W2,
    /// Loading one long stream.
    W3,
    /// Concurrent single-event appends.
    W4,
}

impl Workload {
    const ALL: [Workload; 4] = [Workload::W1, Workload::W2, Workload::W3, Workload::W4];

    fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W4 => "W4",
        }
    }
}

/// mink's throughput on workloads W1-W4, with the raw driver's in the same run.
#[derive(Parser, Debug)]
#[command(name = "mink-bench", version, about, long_about = None)]
struct Cli {
    /// Backend to run.
    #[arg(long, value_enum, default_value = "all", ignore_case = true)]
    backend: Backend,

    /// Workload to run.
    #[arg(long, value_enum, default_value = "all", ignore_case = true)]
    workload: WorkloadArg,

    /// Small sizes, for a smoke run that finishes in seconds.
    #[arg(long)]
    quick: bool,

    /// Streams W1 and W2 append to round-robin (also split among the W4 tasks).
    #[arg(long, value_name = "N")]
    streams: Option<usize>,

    /// W1: events in total [default: 20,000; memory 1,000,000; quick 2,000].
    #[arg(long, value_name = "N")]
    w1_events: Option<u64>,

    /// W2: events in total [default: 200,000; memory 2,000,000; quick 10,000].
    #[arg(long, value_name = "N")]
    w2_events: Option<u64>,

    /// W2: events per append [default: 100].
    #[arg(long, value_name = "N")]
    w2_batch: Option<usize>,

    /// W3: length of the loaded stream [default: 10,000; quick 1,000].
    #[arg(long, value_name = "N")]
    w3_stream_len: Option<usize>,

    /// W3: number of loads [default: 50; memory 500; quick 3].
    #[arg(long, value_name = "N")]
    w3_loads: Option<u64>,

    /// W4: concurrent tasks [default: 8].
    #[arg(long, value_name = "N")]
    w4_tasks: Option<usize>,

    /// W4: events per task [default: 5,000; memory 100,000; quick 250].
    #[arg(long, value_name = "N")]
    w4_events_per_task: Option<u64>,
}

impl Cli {
    /// The sizes for `backend`: its defaults (or the quick ones), then the overrides.
    fn sizes(&self, backend: Backend) -> Sizes {
        let memory = backend == Backend::Memory;
        let mut s = match (self.quick, memory) {
            (false, false) => Sizes {
                streams: 1000,
                w1_events: 20_000,
                w2_events: 200_000,
                w2_batch: 100,
                w3_stream_len: 10_000,
                w3_loads: 50,
                w4_tasks: 8,
                w4_events_per_task: 5_000,
                w4_streams_per_task: 0,
            },
            // The memory store is 100x faster: the SQLite sizes would time a few
            // milliseconds, too little for a stable figure.
            (false, true) => Sizes {
                streams: 1000,
                w1_events: 1_000_000,
                w2_events: 2_000_000,
                w2_batch: 100,
                w3_stream_len: 10_000,
                w3_loads: 500,
                w4_tasks: 8,
                w4_events_per_task: 100_000,
                w4_streams_per_task: 0,
            },
            (true, _) => Sizes {
                streams: 1000,
                w1_events: 2_000,
                w2_events: 10_000,
                w2_batch: 100,
                w3_stream_len: 1_000,
                w3_loads: 3,
                w4_tasks: 8,
                w4_events_per_task: 250,
                w4_streams_per_task: 0,
            },
        };
        s.streams = self.streams.unwrap_or(s.streams).max(1);
        s.w1_events = self.w1_events.unwrap_or(s.w1_events);
        s.w2_events = self.w2_events.unwrap_or(s.w2_events);
        s.w2_batch = self.w2_batch.unwrap_or(s.w2_batch).max(1);
        s.w3_stream_len = self.w3_stream_len.unwrap_or(s.w3_stream_len).max(1);
        s.w3_loads = self.w3_loads.unwrap_or(s.w3_loads);
        s.w4_tasks = self.w4_tasks.unwrap_or(s.w4_tasks).max(1);
        s.w4_events_per_task = self.w4_events_per_task.unwrap_or(s.w4_events_per_task);
        s.w4_streams_per_task = (s.streams / s.w4_tasks).max(1);
        s
    }
}

/// One output line: one implementation's result on one workload.
pub struct Line {
    /// The workload.
    pub workload: Workload,
    /// `memory` or `sqlite`.
    pub backend: &'static str,
    /// `mink` or `raw`.
    pub implementation: &'static str,
    /// What was measured.
    pub measurement: Measurement,
    /// The raw baseline measured in the same run, for mink lines that have one.
    pub raw: Option<Measurement>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let eps = self.measurement.events_per_s();
        write!(
            f,
            "workload={} backend={} impl={} events_per_s={:.0}",
            self.workload.name(),
            self.backend,
            self.implementation,
            eps
        )?;
        if let Some(raw) = &self.raw {
            write!(f, " ratio_to_raw={:.2}", eps / raw.events_per_s())?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mink-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let backends: Vec<Backend> = match cli.backend {
        Backend::All if std::env::var_os("MINK_POSTGRES_URL").is_some() => {
            vec![Backend::Memory, Backend::Sqlite, Backend::Postgres]
        }
        Backend::All => {
            eprintln!("mink-bench: MINK_POSTGRES_URL is not set; skipping the postgres backend");
            vec![Backend::Memory, Backend::Sqlite]
        }
        one => vec![one],
    };
    let workloads: Vec<Workload> = match cli.workload {
        WorkloadArg::All => Workload::ALL.to_vec(),
        WorkloadArg::W1 => vec![Workload::W1],
        WorkloadArg::W2 => vec![Workload::W2],
        WorkloadArg::W3 => vec![Workload::W3],
        WorkloadArg::W4 => vec![Workload::W4],
    };
    let payload = common::payload()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for backend in backends {
        let sizes = cli.sizes(backend);
        eprintln!("mink-bench: backend {backend:?}, sizes {sizes:?}");
        if backend == Backend::Postgres {
            rt.block_on(postgres::describe_server(&postgres::url()?))?;
        }
        // One temporary directory per backend run; every workload and implementation
        // gets a fresh database file in it. It is removed at the end.
        let dir = tempfile::Builder::new().prefix("mink-bench-").tempdir()?;
        for &workload in &workloads {
            let start = Instant::now();
            let lines = rt.block_on(async {
                match backend {
                    Backend::Memory => memory::run(workload, &sizes, &payload).await,
                    Backend::Postgres => postgres::run(workload, &sizes, &payload).await,
                    _ => sqlite::run(workload, &sizes, &payload, dir.path()).await,
                }
            })?;
            for line in lines {
                println!("{line}");
            }
            eprintln!(
                "mink-bench: {} on {backend:?} took {:.1} s in all",
                workload.name(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
