//! `mink-bench`: mink's throughput on six workloads, side by side with a baseline
//! doing the same work (the raw database driver, the handler called directly, the
//! plain decode path), measured in the same run.
//!
//! ```text
//! cargo run -p mink-bench --release                         # everything
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
//! - **BUS** (`src/bus.rs`): sequential aggregate commands (an account deposit: load,
//!   decide, save one event through a `Repository`) round-robin over 1,000 accounts
//!   (10,000 on memory), in commands/s. `raw` calls the handler directly; `mink`
//!   dispatches it through a `CommandBus` (`register_aggregate`) with the full
//!   middleware stack (Recovery, Tracing, Logging, Metrics, Correlation, Validation,
//!   Timeout, Retry); `mink-stores` adds fail-closed `Audit` and `Idempotency` on the
//!   backend's own stores, which write to the database on every command. No `tracing`
//!   subscriber and no `metrics` recorder is installed, as in a production application
//!   that exports neither.
//! - **W3D** (`src/decode.rs`): W3 with every event decoded into a serde domain event
//!   enum through an `EventDecoder`: `json`, `msgpack` and `protobuf` (prost), then the
//!   JSON stream stored at schema version 1 and read through a one-step upcaster to
//!   version 2, `json-upcast-typed` (`Upcaster::to_event`) and `json-upcast-value`
//!   (`Upcaster::value`). The time spent decoding alone goes to stderr.
//! - **OUTBOX** (`src/outbox.rs`): messages/s of `OutboxProcessor`s draining a
//!   pre-filled outbox of 50,000 messages (1,000 streams x 50 events, appended round by
//!   round, untimed) to Kafka (`impl=kafka`: `KafkaPublisher` to `MINK_KAFKA_BROKERS`,
//!   a fresh 8-partition topic) and to a local webhook receiver (`impl=webhook`:
//!   `WebhookPublisher` to axum on 127.0.0.1, which verifies each signature and
//!   answers 204), on PostgreSQL and SQLite, timed from the start to the last
//!   acknowledgement. Three processors run `run_once` in a loop, claiming 250 messages
//!   per round (`--outbox-workers`, `--outbox-batch`). On PostgreSQL `impl=raw-kafka`
//!   is a hand-written relay (plain SQL and rdkafka, the same batch) as the baseline
//!   of `kafka`. It runs in `all` only when `MINK_KAFKA_BROKERS` is set (without it,
//!   `--workload OUTBOX` gives the webhook lines), and not on the memory backend; the
//!   time a round spends claiming, publishing and acknowledging goes to stderr.
//! - **PROJ** (`src/proj.rs`): events/s of an async projection keeping a SQL read
//!   model (one row per stream, read then written back per event through a typed
//!   repository) while catching up with a pre-filled store of 100,000 events over 1,000
//!   streams, in the transaction that moves its checkpoint: `mink-p1` (one worker) and
//!   `mink-p4` (four partitions), against `raw`, the same read model kept with
//!   hand-written SQL and the same batch size, on SQLite and PostgreSQL. Not on the
//!   memory backend.
//!
//! Every workload prints one line per implementation on stdout, and nothing else goes
//! to stdout:
//!
//! ```text
//! workload=W1 backend=sqlite impl=raw events_per_s=13000
//! workload=W1 backend=sqlite impl=mink events_per_s=12345 ratio_to_raw=0.95
//! workload=BUS backend=sqlite impl=mink commands_per_s=19000 ratio_to_raw=0.97
//! workload=W3D backend=sqlite impl=json-upcast-typed events_per_s=830000 ratio_to_plain=0.76
//! workload=OUTBOX backend=postgres impl=kafka events_per_s=21000 ratio_to_raw=0.60
//! ```
//!
//! Raw lines carry no ratio; W1-W4 on the memory backend have no raw baseline. BUS
//! lines other than `raw` carry `ratio_to_raw`; the W3D upcast lines carry
//! `ratio_to_plain`, their events/s over `json`'s (above 0.67, the upcast path costs
//! less than 1.5 times the plain one). Every figure comes from `std::time::Instant`
//! around the timed loops, and every run checks afterwards, outside the timing, that
//! the work was done. Progress goes to stderr.
//!
//! Fairness (see `src/sqlite/mod.rs` and `src/postgres/mod.rs`): on SQLite each side's
//! share of a workload is split into runs done in mirrored order (raw, mink, mink, raw;
//! for more sides A B C C B A); each run has a fresh database file and its own
//! connections, the same warm-up (a tenth of its work, at most 1,000 units, untimed),
//! and only one side's connections are open at a time. On PostgreSQL both sides stay
//! open in fresh schemas and their work is cut into chunks run in alternating order.
//! Events/s is total events over total timed time. The memory backend times W1-W4 in
//! one run, after a warm-up, on a fresh store, and BUS and W3D in mirrored runs on
//! fresh stores, as SQLite.

mod bus;
mod common;
mod decode;
mod memory;
mod outbox;
mod postgres;
mod proj;
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
    /// Aggregate commands through the command bus and its middleware.
    #[value(name = "BUS")]
    Bus,
    /// Loading one long stream and decoding every event, per codec and upcaster.
    #[value(name = "W3D")]
    W3D,
    /// Draining a pre-filled outbox to Kafka and to a webhook receiver.
    #[value(name = "OUTBOX")]
    Outbox,
    /// An async projection keeping a SQL read model, catching up with a full store.
    #[value(name = "PROJ")]
    Proj,
    /// All of them (OUTBOX only when `MINK_KAFKA_BROKERS` is set).
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
    /// Aggregate commands through the command bus.
    Bus,
    /// Loading and decoding one long stream.
    W3D,
    /// Draining a pre-filled outbox through the outbox processor.
    Outbox,
    /// An async projection catching up with a pre-filled store.
    Proj,
}

impl Workload {
    const ALL: [Workload; 8] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4,
        Workload::Bus,
        Workload::W3D,
        Workload::Outbox,
        Workload::Proj,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W4 => "W4",
            Workload::Bus => "BUS",
            Workload::W3D => "W3D",
            Workload::Outbox => "OUTBOX",
            Workload::Proj => "PROJ",
        }
    }

    /// The name of the throughput field of the workload's lines.
    fn unit(self) -> &'static str {
        match self {
            Workload::Bus => "commands_per_s",
            _ => "events_per_s",
        }
    }
}

/// mink's throughput on workloads W1-W4, BUS, W3D and OUTBOX, with the baselines
/// measured in the same run.
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

    /// BUS: commands per implementation [default: 20,000; postgres 4,000; memory
    /// 200,000; quick 1,000, postgres 400].
    #[arg(long, value_name = "N")]
    bus_commands: Option<u64>,

    /// BUS: accounts the commands go round-robin over [default: 1,000; memory 10,000;
    /// quick 100].
    #[arg(long, value_name = "N")]
    bus_accounts: Option<usize>,

    /// W3D: loads of the stream per implementation (its length is --w3-stream-len)
    /// [default: 50; memory 100; quick 3].
    #[arg(long, value_name = "N")]
    w3d_loads: Option<u64>,

    /// OUTBOX: messages delivered in the timed part [default: 50,000; quick 2,000].
    #[arg(long, value_name = "N")]
    outbox_messages: Option<u64>,

    /// OUTBOX: streams the events are spread over [default: 1,000].
    #[arg(long, value_name = "N")]
    outbox_streams: Option<usize>,

    /// OUTBOX: messages claimed per round (`ProcessorConfig::batch_size`; also the raw
    /// relay's batch) [default: 250].
    #[arg(long, value_name = "N")]
    outbox_batch: Option<usize>,

    /// OUTBOX: concurrent processors [default: 3].
    #[arg(long, value_name = "N")]
    outbox_workers: Option<usize>,

    /// PROJ: events in the pre-filled store [default: 100,000; quick 2,000].
    #[arg(long, value_name = "N")]
    proj_events: Option<u64>,

    /// PROJ: streams the events are spread over, one read-model row each
    /// [default: 1,000; quick 100].
    #[arg(long, value_name = "N")]
    proj_streams: Option<usize>,
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
                // A command is a read and a commit; on PostgreSQL a commit waits for a
                // WAL flush (about 1 ms on a disk), so it gets fewer.
                bus_commands: if backend == Backend::Postgres {
                    4_000
                } else {
                    20_000
                },
                bus_accounts: 1000,
                w3d_loads: 50,
                outbox_messages: 50_000,
                outbox_streams: 1000,
                outbox_batch: 250,
                outbox_workers: 3,
                proj_events: 100_000,
                proj_streams: 1000,
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
                // As many events per account by the end of a run (about 5) as on the
                // other backends.
                bus_commands: 200_000,
                bus_accounts: 10_000,
                w3d_loads: 100,
                outbox_messages: 50_000,
                outbox_streams: 1000,
                outbox_batch: 250,
                outbox_workers: 3,
                proj_events: 100_000,
                proj_streams: 1000,
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
                bus_commands: if backend == Backend::Postgres {
                    400
                } else {
                    1_000
                },
                bus_accounts: 100,
                w3d_loads: 3,
                outbox_messages: 2_000,
                outbox_streams: 1000,
                outbox_batch: 250,
                outbox_workers: 3,
                proj_events: 2_000,
                proj_streams: 100,
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
        s.bus_commands = self.bus_commands.unwrap_or(s.bus_commands);
        s.bus_accounts = self.bus_accounts.unwrap_or(s.bus_accounts).max(1);
        s.w3d_loads = self.w3d_loads.unwrap_or(s.w3d_loads);
        s.outbox_messages = self.outbox_messages.unwrap_or(s.outbox_messages);
        s.outbox_streams = self.outbox_streams.unwrap_or(s.outbox_streams).max(1);
        s.outbox_batch = self.outbox_batch.unwrap_or(s.outbox_batch).max(1);
        s.outbox_workers = self.outbox_workers.unwrap_or(s.outbox_workers).max(1);
        s.proj_events = self.proj_events.unwrap_or(s.proj_events).max(1);
        s.proj_streams = self.proj_streams.unwrap_or(s.proj_streams).max(1);
        s
    }
}

/// What a line's ratio compares against, measured in the same run.
#[derive(Clone, Copy, Debug)]
pub enum Baseline {
    /// The raw baseline (`ratio_to_raw`): the raw driver, or for BUS the handler
    /// called directly.
    Raw(Measurement),
    /// The plain path (`ratio_to_plain`): for W3D, JSON without upcasting.
    Plain(Measurement),
}

/// One output line: one implementation's result on one workload.
pub struct Line {
    /// The workload.
    pub workload: Workload,
    /// `memory`, `sqlite` or `postgres`.
    pub backend: &'static str,
    /// `raw`, `mink`, or the workload's own names (`mink-stores`, `json`, …).
    pub implementation: &'static str,
    /// What was measured.
    pub measurement: Measurement,
    /// The baseline of the line's ratio, for lines that have one.
    pub baseline: Option<Baseline>,
}

impl Line {
    /// A line without a ratio.
    pub fn new(
        workload: Workload,
        backend: &'static str,
        implementation: &'static str,
        measurement: Measurement,
    ) -> Self {
        Line {
            workload,
            backend,
            implementation,
            measurement,
            baseline: None,
        }
    }

    /// The same line with a `ratio_to_raw` against `raw`.
    pub fn against_raw(mut self, raw: Measurement) -> Self {
        self.baseline = Some(Baseline::Raw(raw));
        self
    }

    /// The same line with a `ratio_to_plain` against `plain`.
    pub fn against_plain(mut self, plain: Measurement) -> Self {
        self.baseline = Some(Baseline::Plain(plain));
        self
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let eps = self.measurement.events_per_s();
        write!(
            f,
            "workload={} backend={} impl={} {}={:.0}",
            self.workload.name(),
            self.backend,
            self.implementation,
            self.workload.unit(),
            eps
        )?;
        match &self.baseline {
            Some(Baseline::Raw(raw)) => write!(f, " ratio_to_raw={:.2}", eps / raw.events_per_s()),
            Some(Baseline::Plain(plain)) => {
                write!(f, " ratio_to_plain={:.2}", eps / plain.events_per_s())
            }
            None => Ok(()),
        }
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
        WorkloadArg::All if outbox::brokers().is_some() => Workload::ALL.to_vec(),
        WorkloadArg::All => {
            eprintln!(
                "mink-bench: MINK_KAFKA_BROKERS is not set; skipping the OUTBOX workload \
                 (run it with --workload OUTBOX for its webhook lines)"
            );
            Workload::ALL
                .into_iter()
                .filter(|&w| w != Workload::Outbox)
                .collect()
        }
        WorkloadArg::W1 => vec![Workload::W1],
        WorkloadArg::W2 => vec![Workload::W2],
        WorkloadArg::W3 => vec![Workload::W3],
        WorkloadArg::W4 => vec![Workload::W4],
        WorkloadArg::Bus => vec![Workload::Bus],
        WorkloadArg::W3D => vec![Workload::W3D],
        WorkloadArg::Outbox => vec![Workload::Outbox],
        WorkloadArg::Proj => vec![Workload::Proj],
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
            if matches!(workload, Workload::Outbox | Workload::Proj) && backend == Backend::Memory {
                eprintln!(
                    "mink-bench: {} runs on sqlite and postgres; skipping it on memory",
                    workload.name()
                );
                continue;
            }
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
