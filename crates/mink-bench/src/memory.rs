//! The memory backend: the workloads on [`MemoryStore`]. There is no raw baseline, so the
//! lines carry no ratio.

use anyhow::Result;
use bytes::Bytes;
use mink_es::MemoryStore;

use crate::common::{Measurement, Sizes, warmup};
use crate::workloads::{Appends, Concurrent, Loads};
use crate::{Line, Workload};

/// Runs `workload` on a fresh [`MemoryStore`] and reports one line.
pub async fn run(workload: Workload, sizes: &Sizes, payload: &Bytes) -> Result<Vec<Line>> {
    let store = MemoryStore::new();
    let mut m = Measurement::default();
    match workload {
        Workload::W1 | Workload::W2 => {
            let (batch, total) = if workload == Workload::W1 {
                (1, sizes.w1_events)
            } else {
                (sizes.w2_batch, sizes.w2_events)
            };
            let appends = total / batch as u64;
            let mut w = Appends::new(store, sizes.streams, batch, payload.clone())?;
            let warm = warmup(appends);
            w.run(warm).await?;
            m.add(w.run(appends).await?);
            w.verify((warm + appends) * batch as u64).await?;
        }
        Workload::W3 => {
            let mut w = Loads::setup(store, sizes.w3_stream_len, payload).await?;
            w.run(warmup(sizes.w3_loads)).await?;
            m.add(w.run(sizes.w3_loads).await?);
        }
        Workload::W4 => {
            let mut w = Concurrent::new(store, sizes, payload.clone())?;
            let warm = warmup(sizes.w4_events_per_task);
            w.run(warm).await?;
            m.add(w.run(sizes.w4_events_per_task).await?);
            w.verify((warm + sizes.w4_events_per_task) * sizes.w4_tasks as u64)
                .await?;
        }
    }
    Ok(vec![Line {
        workload,
        backend: "memory",
        implementation: "mink",
        measurement: m,
        raw: None,
    }])
}
