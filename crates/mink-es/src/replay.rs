//! Turning stored events back into domain events: strict and lenient replay.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::codec::{DecodeFailure, Document, EventCodec};
use crate::schema::{SchemaRegistry, Upcastable};
use crate::{Error, Result, StoredEvent};

/// What replay does with an event whose type the code does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayMode {
    /// Fail with [`Error::UnknownEventType`], naming stream, version and type.
    #[default]
    Strict,
    /// Skip it, count it per type, and log a warning the first time each type is seen.
    /// The counts are available from [`UnknownTypes::counts`] and as the metric
    /// `mink_replay_unknown_events_total{event_type}`.
    Lenient,
}

/// Counts of unknown event types met in lenient replay.
#[derive(Debug, Default)]
pub struct UnknownTypes {
    counts: Mutex<HashMap<String, u64>>,
}

impl UnknownTypes {
    /// Records one unknown event of type `event_type` (the stored type, or what an
    /// upcaster renamed it to); logs the first of each type.
    pub fn record(&self, event: &StoredEvent, event_type: &str) {
        let first = {
            let mut counts = self.counts.lock();
            let c = counts.entry(event_type.to_owned()).or_insert(0);
            *c += 1;
            *c == 1
        };
        if first {
            tracing::warn!(
                stream = %event.stream_id,
                version = event.version,
                event_type,
                "unknown event type skipped during lenient replay (further events of this type are counted, not logged)"
            );
        }
        metrics::counter!("mink_replay_unknown_events_total", "event_type" => event_type.to_owned())
            .increment(1);
    }

    /// How many events of each unknown type were skipped.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Total unknown events skipped.
    pub fn total(&self) -> u64 {
        self.counts.lock().values().sum()
    }
}

/// Decodes stored events into a domain event type: upcasts them through a
/// [`SchemaRegistry`] to today's shape, decodes them with an [`EventCodec`], and
/// applies a [`ReplayMode`] to types the code does not know.
pub struct EventDecoder<E, C> {
    codec: C,
    mode: ReplayMode,
    unknown: Arc<UnknownTypes>,
    schema: Arc<SchemaRegistry>,
    _e: PhantomData<fn() -> E>,
}

impl<E, C: Clone> Clone for EventDecoder<E, C> {
    fn clone(&self) -> Self {
        EventDecoder {
            codec: self.codec.clone(),
            mode: self.mode,
            unknown: self.unknown.clone(),
            schema: self.schema.clone(),
            _e: PhantomData,
        }
    }
}

impl<E: Send + 'static, C: EventCodec<E>> EventDecoder<E, C> {
    /// A decoder with an empty schema registry (nothing is upcast).
    pub fn new(codec: C, mode: ReplayMode) -> Self {
        EventDecoder {
            codec,
            mode,
            unknown: Arc::default(),
            schema: Arc::new(SchemaRegistry::empty()),
            _e: PhantomData,
        }
    }

    /// Upcasts through `schema` before decoding.
    pub fn with_schema(mut self, schema: Arc<SchemaRegistry>) -> Self {
        self.schema = schema;
        self
    }

    /// The replay mode.
    pub fn mode(&self) -> ReplayMode {
        self.mode
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// The schema registry.
    pub fn schema(&self) -> &Arc<SchemaRegistry> {
        &self.schema
    }

    /// Unknown types met so far (lenient mode).
    pub fn unknown_types(&self) -> &Arc<UnknownTypes> {
        &self.unknown
    }

    /// Decodes one stored event into zero, one or several domain events (an upcaster
    /// may drop or split it), calling `f` with each, in order.
    ///
    /// # Errors
    /// [`Error::UnknownEventType`] in strict mode; [`Error::Decode`],
    /// [`Error::UnknownCodec`], [`Error::SchemaTooNew`] or [`Error::Upcast`] (each
    /// naming stream, version and type) when the event cannot be read.
    pub fn decode_each(&self, event: &StoredEvent, mut f: impl FnMut(E)) -> Result<()> {
        let doc = Document::Payload {
            codec: event.codec.clone(),
            bytes: event.payload.clone(),
        };
        let needs = self
            .schema
            .needs_upcast(event.event_type.as_str(), event.schema_version)
            .map_err(|e| event.upcast_error(e))?;
        if !needs {
            if let Some(e) = self.decode_one(event, event.event_type.as_str(), doc)? {
                f(e);
            }
            return Ok(());
        }
        let parts = self
            .schema
            .upcast(Upcastable {
                event_type: event.event_type.to_string(),
                schema_version: event.schema_version,
                codec: event.codec.clone(),
                doc,
            })
            .map_err(|e| event.upcast_error(e))?;
        for part in parts {
            if let Some(e) = self.decode_one(event, &part.event_type, part.doc)? {
                f(e);
            }
        }
        Ok(())
    }

    /// Decodes one stored event into the domain events it stands for (see
    /// [`EventDecoder::decode_each`]).
    pub fn decode(&self, event: &StoredEvent) -> Result<Vec<E>> {
        let mut out = Vec::with_capacity(1);
        self.decode_each(event, |e| out.push(e))?;
        Ok(out)
    }

    fn decode_one(
        &self,
        event: &StoredEvent,
        event_type: &str,
        doc: Document,
    ) -> Result<Option<E>> {
        match self.codec.decode(event_type, doc) {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => match self.mode {
                ReplayMode::Strict => Err(Error::UnknownEventType {
                    stream: event.stream_id.clone(),
                    version: event.version,
                    event_type: event_type.to_owned(),
                }),
                ReplayMode::Lenient => {
                    self.unknown.record(event, event_type);
                    Ok(None)
                }
            },
            Err(DecodeFailure::UnknownCodec(codec)) => Err(Error::UnknownCodec {
                stream: event.stream_id.clone(),
                version: event.version,
                event_type: event_type.to_owned(),
                codec: codec.to_string(),
            }),
            Err(DecodeFailure::Invalid(source)) => Err(event.decode_error(source)),
        }
    }
}
