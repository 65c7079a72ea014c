//! Snapshots and checkpoints.

use bytes::Bytes;
use mink_es::{
    CheckpointStore, CodecTag, Error, Position, Result, Snapshot, SnapshotStore, StreamId,
};
use sqlx::{PgConnection, Row};

use crate::PgEventStore;
use crate::error::PgStoreError;
use crate::time::read_time;

impl SnapshotStore for PgEventStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let schema_version = i32::try_from(snapshot.schema_version).map_err(|_| {
            Error::InvalidArgument(format!(
                "snapshot of {} has schema version {}; the limit is {}",
                snapshot.stream_id,
                snapshot.schema_version,
                i32::MAX
            ))
        })?;
        let version = i64::try_from(snapshot.version).map_err(|_| {
            Error::InvalidArgument(format!(
                "snapshot of {} is at version {}, beyond what PostgreSQL stores",
                snapshot.stream_id, snapshot.version
            ))
        })?;
        sqlx::query(self.statements().save_snapshot.sql())
            .bind(snapshot.stream_id.as_str())
            .bind(snapshot.aggregate_type.as_str())
            .bind(version)
            .bind(schema_version)
            .bind(snapshot.codec.as_str())
            .bind(snapshot.payload.as_ref())
            .bind(snapshot.taken_at)
            .execute(self.pool())
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let row = sqlx::query(self.statements().load_snapshot.sql())
            .bind(stream.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(|e| self.map_err(e))?;
        let Some(r) = row else { return Ok(None) };
        let m = |e| self.map_err(e);
        let version: i64 = r.try_get(1).map_err(m)?;
        let schema_version: i32 = r.try_get(2).map_err(m)?;
        let codec: String = r.try_get(3).map_err(m)?;
        let payload: Vec<u8> = r.try_get(4).map_err(m)?;
        let taken_at = read_time(&r, 5).map_err(|e| PgStoreError::Corrupt {
            what: "snapshots",
            detail: format!("the snapshot of {stream} has a bad taken_at: {e}"),
        })?;
        Ok(Some(Snapshot {
            stream_id: stream.clone(),
            aggregate_type: r.try_get(0).map_err(m)?,
            version: u64::try_from(version).unwrap_or(0),
            schema_version: u32::try_from(schema_version).unwrap_or(0),
            codec: if codec == "json" {
                CodecTag::JSON
            } else {
                CodecTag::from(codec)
            },
            payload: Bytes::from(payload),
            taken_at,
        }))
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<()> {
        sqlx::query(self.statements().delete_snapshot.sql())
            .bind(stream.as_str())
            .execute(self.pool())
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(())
    }
}

impl CheckpointStore for PgEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(self.statements().load_checkpoint.sql())
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(|e| self.map_err(e))?;
        bytes.map(|b| Position::from_bytes(&b)).transpose()
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        let mut conn = self.pool().acquire().await.map_err(|e| self.map_err(e))?;
        save_checkpoint(self, &mut conn, name, position).await
    }
}

pub(crate) async fn save_checkpoint(
    store: &PgEventStore,
    conn: &mut PgConnection,
    name: &str,
    position: Position,
) -> Result<()> {
    sqlx::query(store.statements().save_checkpoint.sql())
        .bind(name)
        .bind(&position.to_bytes()[..])
        .execute(conn)
        .await
        .map_err(|e| store.map_err(e))?;
    Ok(())
}
