//! The memory backend: the workloads on [`MemoryStore`].
//!
//! W1-W4 have no raw baseline, so their lines carry no ratio; each is timed in one run,
//! after a warm-up, on a fresh store. BUS (against the handler called directly, with
//! the memory idempotency and audit stores of `mink_es::command` for `mink-stores`)
//! and W3D (against plain JSON) compare implementations, so they run them in mirrored
//! order, two runs each, each on a fresh store.

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use mink_es::MemoryStore;
use mink_es::command::audit::MemoryAuditStore;
use mink_es::command::idempotency::MemoryIdempotencyStore;

use crate::bus::{self, CommandStores};
use crate::common::{Measurement, Sizes, warmup};
use crate::decode;
use crate::workloads::{Appends, Concurrent, Loads};
use crate::{Line, Workload};

/// Runs `workload` on fresh [`MemoryStore`]s and reports its lines.
pub async fn run(workload: Workload, sizes: &Sizes, payload: &Bytes) -> Result<Vec<Line>> {
    let mut m = Measurement::default();
    match workload {
        Workload::W1 | Workload::W2 => {
            let (batch, total) = if workload == Workload::W1 {
                (1, sizes.w1_events)
            } else {
                (sizes.w2_batch, sizes.w2_events)
            };
            let appends = total / batch as u64;
            let mut w = Appends::new(MemoryStore::new(), sizes.streams, batch, payload.clone())?;
            let warm = warmup(appends);
            w.run(warm).await?;
            m.add(w.run(appends).await?);
            w.verify((warm + appends) * batch as u64).await?;
        }
        Workload::W3 => {
            let mut w = Loads::setup(MemoryStore::new(), sizes.w3_stream_len, payload).await?;
            w.run(warmup(sizes.w3_loads)).await?;
            m.add(w.run(sizes.w3_loads).await?);
        }
        Workload::W4 => {
            let mut w = Concurrent::new(MemoryStore::new(), sizes, payload.clone())?;
            let warm = warmup(sizes.w4_events_per_task);
            w.run(warm).await?;
            m.add(w.run(sizes.w4_events_per_task).await?);
            w.verify((warm + sizes.w4_events_per_task) * sizes.w4_tasks as u64)
                .await?;
        }
        Workload::Bus => {
            let sides = [bus::Side::Raw, bus::Side::Mink, bus::Side::MinkStores];
            let results = bus::mirrored_runs(sizes, &sides, async |_, _| {
                let stores = CommandStores {
                    idempotency: Arc::new(MemoryIdempotencyStore::new()),
                    audit: Arc::new(MemoryAuditStore::new()),
                };
                Ok((MemoryStore::new(), Some(stores)))
            })
            .await?;
            return Ok(bus::lines("memory", &results));
        }
        Workload::W3D => {
            let results =
                decode::mirrored_runs(sizes, payload, async |_, _| Ok(MemoryStore::new())).await?;
            return Ok(decode::lines("memory", &results));
        }
        Workload::Outbox | Workload::Proj => {
            return Err(anyhow::anyhow!(
                "{} does not run on the memory backend",
                workload.name()
            ));
        }
    }
    Ok(vec![Line::new(workload, "memory", "mink", m)])
}
