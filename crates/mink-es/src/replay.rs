//! Turning stored events back into domain events: strict and lenient replay.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::codec::{Codec, decode_event};
use crate::{DomainEvent, Error, Result, StoredEvent};

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
    /// Records one unknown event; logs the first of each type.
    pub fn record(&self, event: &StoredEvent) {
        let first = {
            let mut counts = self.counts.lock();
            let c = counts.entry(event.event_type.to_string()).or_insert(0);
            *c += 1;
            *c == 1
        };
        if first {
            tracing::warn!(
                stream = %event.stream_id,
                version = event.version,
                event_type = %event.event_type,
                "unknown event type skipped during lenient replay (further events of this type are counted, not logged)"
            );
        }
        metrics::counter!("mink_replay_unknown_events_total", "event_type" => event.event_type.to_string())
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

/// Decodes stored events into a domain event type with a codec and a replay mode.
pub struct EventDecoder<E, C> {
    codec: C,
    mode: ReplayMode,
    unknown: Arc<UnknownTypes>,
    _e: PhantomData<fn() -> E>,
}

impl<E, C: Clone> Clone for EventDecoder<E, C> {
    fn clone(&self) -> Self {
        EventDecoder {
            codec: self.codec.clone(),
            mode: self.mode,
            unknown: self.unknown.clone(),
            _e: PhantomData,
        }
    }
}

impl<E: DomainEvent, C: Codec> EventDecoder<E, C> {
    /// A decoder.
    pub fn new(codec: C, mode: ReplayMode) -> Self {
        EventDecoder {
            codec,
            mode,
            unknown: Arc::default(),
            _e: PhantomData,
        }
    }

    /// The replay mode.
    pub fn mode(&self) -> ReplayMode {
        self.mode
    }

    /// Unknown types met so far (lenient mode).
    pub fn unknown_types(&self) -> &Arc<UnknownTypes> {
        &self.unknown
    }

    /// Decodes one event. `Ok(None)` means an unknown type skipped in lenient mode.
    ///
    /// # Errors
    /// [`Error::UnknownEventType`] in strict mode; [`Error::Decode`] (naming stream,
    /// version and type) when the payload does not decode or was written by another
    /// codec.
    pub fn decode(&self, event: &StoredEvent) -> Result<Option<E>> {
        if event.codec != self.codec.tag() {
            return Err(event.decode_error(format!(
                "payload was written with codec {:?}; this reader decodes {:?}",
                event.codec.as_str(),
                self.codec.tag().as_str()
            )));
        }
        match decode_event::<C, E>(&self.codec, event.event_type.as_str(), &event.payload) {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => match self.mode {
                ReplayMode::Strict => Err(Error::UnknownEventType {
                    stream: event.stream_id.clone(),
                    version: event.version,
                    event_type: event.event_type.to_string(),
                }),
                ReplayMode::Lenient => {
                    self.unknown.record(event);
                    Ok(None)
                }
            },
            Err(source) => Err(event.decode_error(source)),
        }
    }
}
