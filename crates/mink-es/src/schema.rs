//! Schema evolution: event type versions, upcasters, and the registry that holds them.
//!
//! Every event is stored with the schema version of its type at the time it was
//! written (1 unless the registry says otherwise). When the shape of a type changes,
//! bump its version in the [`SchemaRegistry`] and register an [`Upcaster`] from the old
//! version to the new one; stored events are then read in today's shape on every read
//! path (aggregate loads through [`crate::EventDecoder`], feed reads and subscriptions
//! through the [`Upcasting`](crate::upcast::Upcasting) store layer). Stored events are
//! never rewritten.
//!
//! ```
//! use mink_es::schema::{SchemaRegistry, Upcaster};
//!
//! // OrderPlaced v1 had `customer_id`; v2 calls it `customer`.
//! let registry = SchemaRegistry::builder()
//!     .event("OrderPlaced", 2)
//!     .upcaster(Upcaster::value("OrderPlaced", 1, |doc| {
//!         let obj = doc.as_object_mut().ok_or("not an object")?;
//!         let id = obj.remove("customer_id").ok_or("no customer_id")?;
//!         obj.insert("customer".into(), id);
//!         Ok(())
//!     }))
//!     .build()
//!     .unwrap();
//! assert_eq!(registry.current_version("OrderPlaced"), 2);
//!
//! // A version without a way up is refused when the registry is built.
//! let gap = SchemaRegistry::builder().event("OrderShipped", 3).build();
//! assert!(gap.is_err());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, Document, SerdeFormat, encode_event};
use crate::{BoxError, CodecTag};

/// One event on its way up the versions of its type.
#[derive(Debug)]
pub struct Upcastable {
    /// Its type name (an upcaster may rename it).
    pub event_type: String,
    /// Its schema version.
    pub schema_version: u32,
    /// The codec of the stored payload (used to re-encode transformed documents).
    pub codec: CodecTag,
    /// The payload, or what earlier upcasters made of it.
    pub doc: Document,
}

/// An event as raw bytes, for upcasters that work on any codec
/// ([`Upcaster::raw`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// Its type name.
    pub event_type: String,
    /// Its schema version.
    pub schema_version: u32,
    /// The codec of `payload`.
    pub codec: CodecTag,
    /// The encoded payload.
    pub payload: Bytes,
}

type Step = Arc<dyn Fn(Upcastable) -> Result<Vec<Upcastable>, BoxError> + Send + Sync>;

/// Turns events of one type at one schema version into their next shape: usually the
/// same type at the next version, but an upcaster may also rename the type, split the
/// event into several, or drop it.
#[derive(Clone)]
pub struct Upcaster {
    event_type: String,
    from_version: u32,
    produces: Vec<String>,
    step: Step,
}

impl fmt::Debug for Upcaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcaster")
            .field("event_type", &self.event_type)
            .field("from_version", &self.from_version)
            .field("produces", &self.produces)
            .finish_non_exhaustive()
    }
}

/// Decodes a document into a serde value of type `T`.
fn doc_to<T: DeserializeOwned>(codec: &CodecTag, doc: Document) -> Result<T, BoxError> {
    match doc {
        Document::Payload { codec, bytes } => {
            let format = SerdeFormat::from_tag(codec.as_str())
                .ok_or_else(|| format!("unknown codec tag {:?}", codec.as_str()))?;
            format.decode(&bytes)
        }
        Document::Value(v) => Ok(serde_json::from_value(v)?),
        Document::Event(_) => Err(format!(
            "the event was already turned into its final type by an earlier upcaster (codec {codec})"
        )
        .into()),
    }
}

/// Encodes a document as bytes in the codec of its payload.
fn doc_to_bytes(codec: &CodecTag, doc: Document) -> Result<Bytes, BoxError> {
    match doc {
        Document::Payload { bytes, .. } => Ok(bytes),
        Document::Value(v) => {
            let format = SerdeFormat::from_tag(codec.as_str())
                .ok_or_else(|| format!("cannot re-encode a value in codec {:?}", codec.as_str()))?;
            Ok(format.encode(&v)?.into())
        }
        Document::Event(e) => {
            let format = SerdeFormat::from_tag(codec.as_str()).ok_or_else(|| {
                format!("cannot re-encode an event in codec {:?}", codec.as_str())
            })?;
            Ok(e.encode(format)?.1.into())
        }
    }
}

/// A domain event produced by [`Upcaster::to_event`]: usable as is by a decoder of its
/// type, and encodable for readers that need bytes.
pub trait TypedEvent: Send + fmt::Debug {
    /// The event, for a decoder to downcast.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
    /// The event's type name and payload in `format`.
    fn encode(&self, format: SerdeFormat) -> Result<(&'static str, Vec<u8>), BoxError>;
}

impl<E: Serialize + Send + fmt::Debug + 'static> TypedEvent for E {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
    fn encode(&self, format: SerdeFormat) -> Result<(&'static str, Vec<u8>), BoxError> {
        encode_event(&format, self)
    }
}

impl Upcaster {
    fn new(
        event_type: impl Into<String>,
        from_version: u32,
        produces: Vec<String>,
        step: Step,
    ) -> Self {
        Upcaster {
            event_type: event_type.into(),
            from_version,
            produces,
            step,
        }
    }

    /// The type it upcasts.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The version it upcasts from (to the next one, unless it renames or splits).
    pub fn from_version(&self) -> u32 {
        self.from_version
    }

    /// The type names it may produce, other than its own.
    pub fn produces(&self) -> &[String] {
        &self.produces
    }

    /// Edits the event as a JSON value, in place; the result is the same type at
    /// `from_version + 1`. Works for JSON and MessagePack payloads.
    pub fn value(
        event_type: impl Into<String>,
        from_version: u32,
        f: impl Fn(&mut serde_json::Value) -> Result<(), BoxError> + Send + Sync + 'static,
    ) -> Self {
        Upcaster::new(
            event_type,
            from_version,
            Vec::new(),
            Arc::new(move |mut e: Upcastable| {
                let mut v: serde_json::Value = doc_to(&e.codec, e.doc)?;
                f(&mut v)?;
                e.doc = Document::Value(v);
                e.schema_version += 1;
                Ok(vec![e])
            }),
        )
    }

    /// Converts the old shape `Old` into the new shape `New` with a typed function; the
    /// result is the same type at `from_version + 1`.
    pub fn typed<Old, New>(
        event_type: impl Into<String>,
        from_version: u32,
        f: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> Self
    where
        Old: DeserializeOwned,
        New: Serialize,
    {
        Upcaster::new(
            event_type,
            from_version,
            Vec::new(),
            Arc::new(move |mut e: Upcastable| {
                let old: Old = doc_to(&e.codec, e.doc)?;
                e.doc = Document::Value(serde_json::to_value(f(old))?);
                e.schema_version += 1;
                Ok(vec![e])
            }),
        )
    }

    /// Converts the old shape `Old` straight into the domain event enum `E`: the last
    /// step of a chain, and the fastest, since a decoder of `E` uses the value as is
    /// (readers that need bytes re-encode it). The result's type name is `E`'s variant
    /// name, at that type's current version.
    pub fn to_event<Old, E>(
        event_type: impl Into<String>,
        from_version: u32,
        f: impl Fn(Old) -> E + Send + Sync + 'static,
    ) -> Self
    where
        Old: DeserializeOwned,
        E: Serialize + Send + fmt::Debug + 'static,
    {
        Upcaster::new(
            event_type,
            from_version,
            Vec::new(),
            Arc::new(move |e: Upcastable| {
                let old: Old = doc_to(&e.codec, e.doc)?;
                let event = f(old);
                let name = crate::codec::event_type_of(&event)?;
                Ok(vec![Upcastable {
                    event_type: name.to_owned(),
                    schema_version: FINAL_VERSION,
                    codec: e.codec,
                    doc: Document::Event(Box::new(event)),
                }])
            }),
        )
    }

    /// Renames the type: events of `event_type` at `from_version` become `new_type` at
    /// `new_version`, payload unchanged.
    pub fn rename(
        event_type: impl Into<String>,
        from_version: u32,
        new_type: impl Into<String>,
        new_version: u32,
    ) -> Self {
        let new_type = new_type.into();
        let produces = vec![new_type.clone()];
        Upcaster::new(
            event_type,
            from_version,
            produces,
            Arc::new(move |mut e: Upcastable| {
                e.event_type.clone_from(&new_type);
                e.schema_version = new_version;
                Ok(vec![e])
            }),
        )
    }

    /// Drops events of this type and version: readers no longer see them.
    pub fn drop_event(event_type: impl Into<String>, from_version: u32) -> Self {
        Upcaster::new(
            event_type,
            from_version,
            Vec::new(),
            Arc::new(|_| Ok(Vec::new())),
        )
    }

    /// Splits one event into several: `f` returns each part's type name, schema version
    /// and JSON value, in order. `produces` lists the type names it may return.
    pub fn split(
        event_type: impl Into<String>,
        from_version: u32,
        produces: impl IntoIterator<Item = impl Into<String>>,
        f: impl Fn(serde_json::Value) -> Result<Vec<(String, u32, serde_json::Value)>, BoxError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Upcaster::new(
            event_type,
            from_version,
            produces.into_iter().map(Into::into).collect(),
            Arc::new(move |e: Upcastable| {
                let v: serde_json::Value = doc_to(&e.codec, e.doc)?;
                Ok(f(v)?
                    .into_iter()
                    .map(|(event_type, schema_version, v)| Upcastable {
                        event_type,
                        schema_version,
                        codec: e.codec.clone(),
                        doc: Document::Value(v),
                    })
                    .collect())
            }),
        )
    }

    /// Works on raw payloads, for any codec (for example Protobuf, decoding and encoding
    /// the messages itself): returns zero, one or several events. `produces` lists the
    /// type names it may return other than its own.
    pub fn raw(
        event_type: impl Into<String>,
        from_version: u32,
        produces: impl IntoIterator<Item = impl Into<String>>,
        f: impl Fn(RawEvent) -> Result<Vec<RawEvent>, BoxError> + Send + Sync + 'static,
    ) -> Self {
        Upcaster::new(
            event_type,
            from_version,
            produces.into_iter().map(Into::into).collect(),
            Arc::new(move |e: Upcastable| {
                let payload = doc_to_bytes(&e.codec, e.doc)?;
                let raw = RawEvent {
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    codec: e.codec,
                    payload,
                };
                Ok(f(raw)?
                    .into_iter()
                    .map(|r| Upcastable {
                        event_type: r.event_type,
                        schema_version: r.schema_version,
                        doc: Document::Payload {
                            codec: r.codec.clone(),
                            bytes: r.payload,
                        },
                        codec: r.codec,
                    })
                    .collect())
            }),
        )
    }
}

/// The version marker of events made final by [`Upcaster::to_event`].
const FINAL_VERSION: u32 = u32::MAX;

/// Why a registry could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A registered version has no upcaster to the next one.
    #[error("event type {event_type:?} is at version {current}, but no upcaster leads from version {missing} to {next}", next = missing + 1)]
    MissingUpcaster {
        /// The type.
        event_type: String,
        /// The version without a way up.
        missing: u32,
        /// The type's current version.
        current: u32,
    },
    /// Two upcasters claim the same type and version.
    #[error("two upcasters for event type {event_type:?} at version {version}")]
    DuplicateUpcaster {
        /// The type.
        event_type: String,
        /// The version.
        version: u32,
    },
    /// A type was registered twice.
    #[error("event type {0:?} is registered twice")]
    DuplicateType(String),
    /// A version is out of range (versions start at 1).
    #[error("event type {event_type:?}: invalid version {version}")]
    InvalidVersion {
        /// The type.
        event_type: String,
        /// The version.
        version: u32,
    },
    /// An upcaster starts at or after the current version of its type.
    #[error(
        "event type {event_type:?} is at version {current}; an upcaster from version {version} can never apply"
    )]
    UpcasterPastCurrent {
        /// The type.
        event_type: String,
        /// The upcaster's version.
        version: u32,
        /// The type's current version.
        current: u32,
    },
}

/// Why a stored event could not be brought up to date.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// The event's version is newer than the registry knows: it was written by newer
    /// code. It is never guessed at.
    #[error(
        "event type {event_type:?} version {version} is newer than this code knows (version {known})"
    )]
    TooNew {
        /// The type.
        event_type: String,
        /// The stored version.
        version: u32,
        /// The newest version the registry knows.
        known: u32,
    },
    /// No upcaster leads from the event's version (possible only for versions produced
    /// by other upcasters; the registry refuses gaps it can see).
    #[error("no upcaster for event type {event_type:?} at version {version} (current {current})")]
    MissingStep {
        /// The type.
        event_type: String,
        /// The version.
        version: u32,
        /// The current version.
        current: u32,
    },
    /// An upcaster failed.
    #[error("upcasting {event_type:?} from version {version} failed: {source}")]
    Failed {
        /// The type.
        event_type: String,
        /// The version.
        version: u32,
        /// The upcaster's error.
        #[source]
        source: BoxError,
    },
    /// Upcasters keep producing events that need upcasting (a cycle).
    #[error("upcasting {event_type:?} did not finish after {MAX_STEPS} steps (a cycle?)")]
    TooManySteps {
        /// The type that started it.
        event_type: String,
    },
}

const MAX_STEPS: usize = 256;

#[derive(Clone, Debug, Default)]
struct TypeEntry {
    current: u32,
    first: u32,
    schemas: BTreeMap<u32, serde_json::Value>,
}

/// What the registry knows about one event type (for listing, e.g. by the CLI).
#[derive(Clone, Debug, PartialEq)]
pub struct TypeInfo {
    /// The type name.
    pub event_type: String,
    /// The version new events are written with.
    pub current_version: u32,
    /// The oldest version the type has.
    pub first_version: u32,
    /// The versions with an upcaster to the next one.
    pub upcasters: Vec<u32>,
    /// JSON Schemas registered per version.
    pub json_schemas: BTreeMap<u32, serde_json::Value>,
}

/// Builds a [`SchemaRegistry`]; [`SchemaRegistryBuilder::build`] checks it.
#[derive(Default)]
pub struct SchemaRegistryBuilder {
    types: BTreeMap<String, TypeEntry>,
    upcasters: Vec<Upcaster>,
    errors: Vec<SchemaError>,
}

impl SchemaRegistryBuilder {
    /// Declares an event type whose versions run from 1 to `current`.
    pub fn event(self, event_type: impl Into<String>, current: u32) -> Self {
        self.event_since(event_type, 1, current)
    }

    /// Declares an event type whose versions run from `first` to `current` (a type
    /// introduced by a rename, for example).
    pub fn event_since(mut self, event_type: impl Into<String>, first: u32, current: u32) -> Self {
        let event_type = event_type.into();
        if first == 0 || current < first || current == FINAL_VERSION {
            self.errors.push(SchemaError::InvalidVersion {
                event_type,
                version: if first == 0 { 0 } else { current },
            });
            return self;
        }
        if self.types.contains_key(&event_type) {
            self.errors.push(SchemaError::DuplicateType(event_type));
            return self;
        }
        self.types.insert(
            event_type,
            TypeEntry {
                current,
                first,
                schemas: BTreeMap::new(),
            },
        );
        self
    }

    /// Attaches a JSON Schema to one version of a declared type.
    pub fn json_schema(
        mut self,
        event_type: &str,
        version: u32,
        schema: serde_json::Value,
    ) -> Self {
        match self.types.get_mut(event_type) {
            Some(t) if version >= t.first && version <= t.current => {
                t.schemas.insert(version, schema);
            }
            _ => self.errors.push(SchemaError::InvalidVersion {
                event_type: event_type.to_owned(),
                version,
            }),
        }
        self
    }

    /// Adds an upcaster.
    pub fn upcaster(mut self, upcaster: Upcaster) -> Self {
        self.upcasters.push(upcaster);
        self
    }

    /// Checks that every declared version can reach the current one, and that no two
    /// upcasters overlap.
    ///
    /// # Errors
    /// The first [`SchemaError`] found.
    pub fn build(self) -> Result<SchemaRegistry, SchemaError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        let mut steps: HashMap<(String, u32), Upcaster> = HashMap::new();
        for u in self.upcasters {
            if u.from_version == 0 || u.from_version == FINAL_VERSION {
                return Err(SchemaError::InvalidVersion {
                    event_type: u.event_type,
                    version: u.from_version,
                });
            }
            if let Some(t) = self.types.get(&u.event_type)
                && u.from_version >= t.current
            {
                return Err(SchemaError::UpcasterPastCurrent {
                    event_type: u.event_type,
                    version: u.from_version,
                    current: t.current,
                });
            }
            let key = (u.event_type.clone(), u.from_version);
            if steps.contains_key(&key) {
                return Err(SchemaError::DuplicateUpcaster {
                    event_type: key.0,
                    version: key.1,
                });
            }
            steps.insert(key, u);
        }
        for (name, t) in &self.types {
            for v in t.first..t.current {
                if !steps.contains_key(&(name.clone(), v)) {
                    return Err(SchemaError::MissingUpcaster {
                        event_type: name.clone(),
                        missing: v,
                        current: t.current,
                    });
                }
            }
        }
        let mut ancestors: HashMap<String, Vec<String>> = HashMap::new();
        for u in steps.values() {
            for p in &u.produces {
                ancestors
                    .entry(p.clone())
                    .or_default()
                    .push(u.event_type.clone());
            }
        }
        let mut by_type: Steps = Steps::default();
        for ((event_type, version), u) in steps {
            by_type.entry(event_type).or_default().insert(version, u);
        }
        Ok(SchemaRegistry {
            types: self.types,
            steps: by_type,
            ancestors,
        })
    }
}

/// Event type versions and the upcasters between them. Build one with
/// [`SchemaRegistry::builder`]; share it in an `Arc`.
#[derive(Debug, Default)]
pub struct SchemaRegistry {
    types: BTreeMap<String, TypeEntry>,
    /// Upcasters by type, then by the version they start from (looked up by `&str`,
    /// without allocating, on every read of every event).
    steps: Steps,
    ancestors: HashMap<String, Vec<String>>,
}

type Steps = HashMap<String, HashMap<u32, Upcaster>, foldhash::fast::RandomState>;

impl SchemaRegistry {
    /// A builder.
    pub fn builder() -> SchemaRegistryBuilder {
        SchemaRegistryBuilder::default()
    }

    fn step(&self, event_type: &str, version: u32) -> Option<&Upcaster> {
        self.steps.get(event_type)?.get(&version)
    }

    /// An empty registry: every type is at version 1 and nothing is upcast.
    pub fn empty() -> Self {
        SchemaRegistry::default()
    }

    /// True when the registry declares nothing.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty() && self.steps.is_empty()
    }

    /// The version new events of `event_type` are written with (1 for undeclared
    /// types).
    pub fn current_version(&self, event_type: &str) -> u32 {
        self.types.get(event_type).map_or(1, |t| t.current)
    }

    /// Every declared type, with its versions, upcasters and JSON Schemas.
    pub fn list(&self) -> Vec<TypeInfo> {
        self.types
            .iter()
            .map(|(name, t)| TypeInfo {
                event_type: name.clone(),
                current_version: t.current,
                first_version: t.first,
                upcasters: (t.first..t.current).collect(),
                json_schemas: t.schemas.clone(),
            })
            .collect()
    }

    /// Every type name whose stored events may be read as `event_type` (itself, and the
    /// types that upcasters turn into it, transitively).
    pub fn sources_of(&self, event_type: &str) -> Vec<String> {
        let mut out = vec![event_type.to_owned()];
        let mut i = 0;
        while i < out.len() {
            if let Some(a) = self.ancestors.get(&out[i]) {
                for t in a {
                    if !out.contains(t) {
                        out.push(t.clone());
                    }
                }
            }
            i += 1;
        }
        out
    }

    /// Whether an event of this type and version needs upcasting; an error when its
    /// version is newer than the registry knows.
    pub fn needs_upcast(&self, event_type: &str, version: u32) -> Result<bool, UpcastError> {
        if self.types.is_empty() && self.steps.is_empty() {
            return Ok(false);
        }
        if self.step(event_type, version).is_some() {
            return Ok(true);
        }
        match self.types.get(event_type) {
            Some(t) if version > t.current => Err(UpcastError::TooNew {
                event_type: event_type.to_owned(),
                version,
                known: t.current,
            }),
            Some(t) if version < t.current => Err(UpcastError::MissingStep {
                event_type: event_type.to_owned(),
                version,
                current: t.current,
            }),
            _ => Ok(false),
        }
    }

    /// Brings one event up to date: applies upcasters until each resulting event is at
    /// its type's current version (or was made final by [`Upcaster::to_event`]).
    pub fn upcast(&self, event: Upcastable) -> Result<Vec<Upcastable>, UpcastError> {
        let origin = event.event_type.clone();
        let mut pending = vec![event];
        let mut done = Vec::with_capacity(1);
        let mut steps = 0;
        while let Some(e) = pending.pop() {
            if e.schema_version == FINAL_VERSION {
                done.push(e);
                continue;
            }
            if !self.needs_upcast(&e.event_type, e.schema_version)? {
                done.push(e);
                continue;
            }
            steps += 1;
            if steps > MAX_STEPS {
                return Err(UpcastError::TooManySteps { event_type: origin });
            }
            let Some(step) = self.step(&e.event_type, e.schema_version) else {
                return Err(UpcastError::MissingStep {
                    current: self.current_version(&e.event_type),
                    event_type: e.event_type,
                    version: e.schema_version,
                });
            };
            let (event_type, version) = (e.event_type.clone(), e.schema_version);
            let out = (step.step)(e).map_err(|source| UpcastError::Failed {
                event_type,
                version,
                source,
            })?;
            // Keep the order of split events: process them front to back.
            pending.extend(out.into_iter().rev());
        }
        for e in &mut done {
            if e.schema_version == FINAL_VERSION {
                e.schema_version = self.current_version(&e.event_type);
            }
        }
        Ok(done)
    }
}

impl Upcastable {
    /// The payload as bytes in the event's codec (re-encoding a transformed document).
    pub fn into_payload(self) -> Result<(String, u32, CodecTag, Bytes), BoxError> {
        let bytes = doc_to_bytes(&self.codec, self.doc)?;
        Ok((self.event_type, self.schema_version, self.codec, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(t: &str, v: u32, value: serde_json::Value) -> Upcastable {
        Upcastable {
            event_type: t.into(),
            schema_version: v,
            codec: CodecTag::JSON,
            doc: Document::Payload {
                codec: CodecTag::JSON,
                bytes: serde_json::to_vec(&value).unwrap().into(),
            },
        }
    }

    fn as_json(e: Upcastable) -> (String, u32, serde_json::Value) {
        let (t, v, _, bytes) = e.into_payload().unwrap();
        (t, v, serde_json::from_slice(&bytes).unwrap())
    }

    fn add_field(name: &'static str) -> impl Fn(&mut serde_json::Value) -> Result<(), BoxError> {
        move |v| {
            v.as_object_mut()
                .ok_or("not an object")?
                .insert(name.into(), json!(true));
            Ok(())
        }
    }

    #[test]
    fn chains_apply_in_order() {
        let r = SchemaRegistry::builder()
            .event("A", 3)
            .upcaster(Upcaster::value("A", 2, add_field("v3")))
            .upcaster(Upcaster::value("A", 1, add_field("v2")))
            .build()
            .unwrap();
        let out = r.upcast(input("A", 1, json!({}))).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            as_json(out.into_iter().next().unwrap()),
            ("A".into(), 3, json!({"v2": true, "v3": true}))
        );
        let out = r.upcast(input("A", 2, json!({}))).unwrap();
        assert_eq!(
            as_json(out.into_iter().next().unwrap()).2,
            json!({"v3": true})
        );
        assert!(!r.needs_upcast("A", 3).unwrap());
        assert!(matches!(
            r.needs_upcast("A", 4),
            Err(UpcastError::TooNew {
                version: 4,
                known: 3,
                ..
            })
        ));
        assert!(
            !r.needs_upcast("Unknown", 9).unwrap(),
            "undeclared types pass through"
        );
    }

    #[test]
    fn gaps_and_overlaps_are_refused_at_build() {
        let gap = SchemaRegistry::builder()
            .event("A", 3)
            .upcaster(Upcaster::value("A", 1, add_field("x")))
            .build()
            .unwrap_err();
        assert_eq!(
            gap,
            SchemaError::MissingUpcaster {
                event_type: "A".into(),
                missing: 2,
                current: 3
            }
        );
        let dup = SchemaRegistry::builder()
            .event("A", 2)
            .upcaster(Upcaster::value("A", 1, add_field("x")))
            .upcaster(Upcaster::value("A", 1, add_field("y")))
            .build()
            .unwrap_err();
        assert!(matches!(
            dup,
            SchemaError::DuplicateUpcaster { version: 1, .. }
        ));
        let past = SchemaRegistry::builder()
            .event("A", 1)
            .upcaster(Upcaster::value("A", 1, add_field("x")))
            .build()
            .unwrap_err();
        assert!(matches!(past, SchemaError::UpcasterPastCurrent { .. }));
        assert!(SchemaRegistry::builder().event("A", 0).build().is_err());
        assert!(
            SchemaRegistry::builder()
                .event("A", 1)
                .event("A", 2)
                .build()
                .is_err()
        );
        assert!(
            SchemaRegistry::builder()
                .event("A", 1)
                .json_schema("A", 2, json!({}))
                .build()
                .is_err()
        );
    }

    #[test]
    fn rename_split_and_drop() {
        // A declared version with no way up is refused even next to a rename.
        let r = SchemaRegistry::builder()
            .event("UserSignedUp", 3)
            .upcaster(Upcaster::rename("UserSignedUp", 1, "CustomerRegistered", 1))
            .build();
        assert!(matches!(
            r,
            Err(SchemaError::MissingUpcaster { missing: 2, .. })
        ));
        let r = SchemaRegistry::builder()
            .event("CustomerRegistered", 1)
            .upcaster(Upcaster::rename("UserSignedUp", 1, "CustomerRegistered", 1))
            .upcaster(Upcaster::split(
                "ContactChanged",
                1,
                ["Name", "Email"],
                |v| {
                    Ok(vec![
                        ("Name".into(), 1, json!({"name": v["name"]})),
                        ("Email".into(), 1, json!({"email": v["email"]})),
                    ])
                },
            ))
            .upcaster(Upcaster::drop_event("Debug", 1))
            .build()
            .unwrap();
        let renamed = r
            .upcast(input("UserSignedUp", 1, json!({"id": 1})))
            .unwrap();
        assert_eq!(
            as_json(renamed.into_iter().next().unwrap()),
            ("CustomerRegistered".into(), 1, json!({"id": 1}))
        );
        let split = r
            .upcast(input(
                "ContactChanged",
                1,
                json!({"name": "a", "email": "b"}),
            ))
            .unwrap();
        let split: Vec<_> = split.into_iter().map(as_json).collect();
        assert_eq!(
            split,
            vec![
                ("Name".into(), 1, json!({"name": "a"})),
                ("Email".into(), 1, json!({"email": "b"}))
            ]
        );
        assert!(r.upcast(input("Debug", 1, json!({}))).unwrap().is_empty());
        let mut sources = r.sources_of("CustomerRegistered");
        sources.sort();
        assert_eq!(sources, ["CustomerRegistered", "UserSignedUp"]);
        assert_eq!(r.sources_of("Email"), ["Email", "ContactChanged"]);
    }

    #[test]
    fn failures_and_cycles_are_typed() {
        let r = SchemaRegistry::builder()
            .event("A", 2)
            .upcaster(Upcaster::value("A", 1, |_| Err("boom".into())))
            .upcaster(Upcaster::rename("X", 1, "Y", 1))
            .upcaster(Upcaster::rename("Y", 1, "X", 1))
            .build()
            .unwrap();
        assert!(matches!(
            r.upcast(input("A", 1, json!({}))),
            Err(UpcastError::Failed { version: 1, .. })
        ));
        assert!(matches!(
            r.upcast(input("X", 1, json!({}))),
            Err(UpcastError::TooManySteps { .. })
        ));
        let bad = Upcastable {
            doc: Document::Payload {
                codec: CodecTag::JSON,
                bytes: Bytes::from_static(b"{nope"),
            },
            ..input("A", 1, json!({}))
        };
        assert!(matches!(r.upcast(bad), Err(UpcastError::Failed { .. })));
    }

    #[test]
    fn listing() {
        let r = SchemaRegistry::builder()
            .event("A", 2)
            .json_schema("A", 2, json!({"type": "object"}))
            .upcaster(Upcaster::value("A", 1, add_field("x")))
            .build()
            .unwrap();
        let l = r.list();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].current_version, 2);
        assert_eq!(l[0].upcasters, vec![1]);
        assert_eq!(l[0].json_schemas[&2], json!({"type": "object"}));
    }
}
