//! Codecs, and how domain events map to stored type names and payloads.
//!
//! A domain event type is a plain serde enum. Each variant is one event type: the
//! variant's serde name (use `#[serde(rename = "...")]` to make it explicit) is the
//! stored type name, and only the variant's content is encoded as the payload:
//!
//! ```
//! use mink_es::codec::{encode_event, decode_event, event_type_names, JsonCodec};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! enum OrderEvent {
//!     #[serde(rename = "OrderPlaced")]
//!     Placed { total: u64 },
//!     #[serde(rename = "OrderCancelled")]
//!     Cancelled,
//! }
//!
//! let (name, payload) = encode_event(&JsonCodec, &OrderEvent::Placed { total: 5 }).unwrap();
//! assert_eq!(name, "OrderPlaced");
//! assert_eq!(payload, br#"{"total":5}"#);
//! let back: Option<OrderEvent> = decode_event(&JsonCodec, "OrderPlaced", &payload).unwrap();
//! assert_eq!(back, Some(OrderEvent::Placed { total: 5 }));
//! // An unknown type name is reported as `None`, never mistaken for another type.
//! assert_eq!(decode_event::<_, OrderEvent>(&JsonCodec, "Refunded", b"{}").unwrap(), None);
//! assert_eq!(event_type_names::<OrderEvent>(), &["OrderPlaced", "OrderCancelled"]);
//! ```

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{Impossible, SerializeStruct, SerializeTupleStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{BoxError, CodecTag};

/// Encodes and decodes serde values. Implemented for JSON here; later codecs
/// (MessagePack, Protobuf) implement the same trait.
pub trait Codec: Clone + Send + Sync + 'static {
    /// The tag stored with each payload this codec writes.
    fn tag(&self) -> CodecTag;

    /// Encodes a value.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, BoxError>;

    /// Decodes a value with a seed, requiring that the input is consumed entirely.
    fn decode_seed<'de, T: DeserializeSeed<'de>>(
        &self,
        bytes: &'de [u8],
        seed: T,
    ) -> Result<T::Value, BoxError>;

    /// Decodes a value.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError> {
        self.decode_seed(bytes, PhantomData::<T>)
    }
}

/// The JSON codec (serde_json), the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn tag(&self) -> CodecTag {
        CodecTag::JSON
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode_seed<'de, T: DeserializeSeed<'de>>(
        &self,
        bytes: &'de [u8],
        seed: T,
    ) -> Result<T::Value, BoxError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = seed.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
}

/// The MessagePack codec (rmp-serde), with named fields (maps, not arrays), so that
/// fields can be added, removed and reordered over time as with JSON.
#[cfg(feature = "msgpack")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgPackCodec;

#[cfg(feature = "msgpack")]
impl MsgPackCodec {
    /// The tag of MessagePack payloads.
    pub const TAG: CodecTag = CodecTag::from_static("msgpack");
}

#[cfg(feature = "msgpack")]
impl Codec for MsgPackCodec {
    fn tag(&self) -> CodecTag {
        MsgPackCodec::TAG
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, BoxError> {
        Ok(rmp_serde::to_vec_named(value)?)
    }

    fn decode_seed<'de, T: DeserializeSeed<'de>>(
        &self,
        bytes: &'de [u8],
        seed: T,
    ) -> Result<T::Value, BoxError> {
        let mut rest: &[u8] = bytes;
        let value = seed.deserialize(&mut rmp_serde::Deserializer::new(&mut rest))?;
        if !rest.is_empty() {
            let rest = rest.len();
            return Err(format!("{rest} trailing bytes after the MessagePack value").into());
        }
        Ok(value)
    }
}

/// The serde formats a [`SerdeEvents`] codec can write and read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SerdeFormat {
    /// JSON (tag `json`).
    #[default]
    Json,
    /// MessagePack with named fields (tag `msgpack`).
    #[cfg(feature = "msgpack")]
    MsgPack,
}

impl SerdeFormat {
    /// The format whose tag this is, if it is one of these (and enabled).
    pub fn from_tag(tag: &str) -> Option<SerdeFormat> {
        match tag {
            "json" => Some(SerdeFormat::Json),
            #[cfg(feature = "msgpack")]
            "msgpack" => Some(SerdeFormat::MsgPack),
            _ => None,
        }
    }
}

impl Codec for SerdeFormat {
    fn tag(&self) -> CodecTag {
        match self {
            SerdeFormat::Json => CodecTag::JSON,
            #[cfg(feature = "msgpack")]
            SerdeFormat::MsgPack => MsgPackCodec::TAG,
        }
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, BoxError> {
        match self {
            SerdeFormat::Json => JsonCodec.encode(value),
            #[cfg(feature = "msgpack")]
            SerdeFormat::MsgPack => MsgPackCodec.encode(value),
        }
    }

    fn decode_seed<'de, T: DeserializeSeed<'de>>(
        &self,
        bytes: &'de [u8],
        seed: T,
    ) -> Result<T::Value, BoxError> {
        match self {
            SerdeFormat::Json => JsonCodec.decode_seed(bytes, seed),
            #[cfg(feature = "msgpack")]
            SerdeFormat::MsgPack => MsgPackCodec.decode_seed(bytes, seed),
        }
    }
}

/// A stored payload, or what an upcaster turned it into.
#[derive(Debug)]
pub enum Document {
    /// Encoded bytes, as stored, with the tag of their codec.
    Payload {
        /// The codec that wrote the bytes.
        codec: CodecTag,
        /// The bytes.
        bytes: bytes::Bytes,
    },
    /// A JSON value produced by a value upcaster (whatever codec the payload had).
    Value(serde_json::Value),
    /// A domain event produced by a typed upcaster ([`crate::schema::Upcaster::to_event`]),
    /// ready to use as is.
    Event(Box<dyn crate::schema::TypedEvent>),
}

/// An event, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Its stable type name.
    pub event_type: &'static str,
    /// The codec that encoded it.
    pub codec: CodecTag,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Why an event could not be decoded.
#[derive(Debug)]
pub enum DecodeFailure {
    /// The payload's codec tag is not one this codec reads.
    UnknownCodec(CodecTag),
    /// The payload is not a valid encoding of the event type.
    Invalid(BoxError),
}

/// Turns a domain event type into stored payloads and back, possibly with several
/// codecs: the one it writes, and every one it can read.
pub trait EventCodec<E>: Clone + Send + Sync + 'static {
    /// Encodes one event.
    fn encode(&self, event: &E) -> Result<Encoded, BoxError>;

    /// Decodes one event of type `event_type`. `Ok(None)` means the type is not one of
    /// `E`'s.
    fn decode(&self, event_type: &str, doc: Document) -> Result<Option<E>, DecodeFailure>;
}

/// The [`EventCodec`] for serde enums (see the [module docs](self)): writes JSON, or
/// MessagePack, chosen for all events or per event type, and reads both.
#[derive(Clone, Debug, Default)]
pub struct SerdeEvents {
    default: SerdeFormat,
    per_type: std::sync::Arc<std::collections::HashMap<String, SerdeFormat>>,
}

impl SerdeEvents {
    /// Writes every event in `format`.
    pub fn new(format: SerdeFormat) -> Self {
        SerdeEvents {
            default: format,
            per_type: Default::default(),
        }
    }

    /// Writes events of `event_type` in `format` (others in the default format).
    pub fn with_format_for(mut self, event_type: impl Into<String>, format: SerdeFormat) -> Self {
        std::sync::Arc::make_mut(&mut self.per_type).insert(event_type.into(), format);
        self
    }

    /// The format events of `event_type` are written in.
    pub fn format_for(&self, event_type: &str) -> SerdeFormat {
        self.per_type
            .get(event_type)
            .copied()
            .unwrap_or(self.default)
    }
}

impl<E: Serialize + DeserializeOwned + Send + Sync + 'static> EventCodec<E> for SerdeEvents {
    fn encode(&self, event: &E) -> Result<Encoded, BoxError> {
        let name = event_type_of(event)?;
        let format = self.format_for(name);
        let (event_type, payload) = encode_event(&format, event)?;
        Ok(Encoded {
            event_type,
            codec: format.tag(),
            payload,
        })
    }

    fn decode(&self, event_type: &str, doc: Document) -> Result<Option<E>, DecodeFailure> {
        match doc {
            Document::Payload { codec, bytes } => {
                let Some(format) = SerdeFormat::from_tag(codec.as_str()) else {
                    return Err(DecodeFailure::UnknownCodec(codec));
                };
                decode_event(&format, event_type, &bytes).map_err(DecodeFailure::Invalid)
            }
            Document::Value(value) => {
                decode_event_from(value, event_type).map_err(DecodeFailure::Invalid)
            }
            Document::Event(event) => match event.into_any().downcast::<E>() {
                Ok(e) => Ok(Some(*e)),
                Err(_) => Err(DecodeFailure::Invalid(
                    "a typed upcaster produced a value of another event type".into(),
                )),
            },
        }
    }
}

const NOT_AN_ENUM: &str = "a domain event type must be a serde enum whose variants are the event types (externally tagged, the serde default)";

/// Encodes one domain event: returns its type name (the variant's serde name) and the
/// encoded content of the variant.
pub fn encode_event<C: Codec, E: Serialize + ?Sized>(
    codec: &C,
    event: &E,
) -> Result<(&'static str, Vec<u8>), BoxError> {
    let name = Cell::new(None);
    let bytes = codec.encode(&VariantContent { event, name: &name })?;
    match name.get() {
        Some(n) => Ok((n, bytes)),
        None => Err(NOT_AN_ENUM.into()),
    }
}

/// The type name of a domain event (its variant's serde name), without encoding it.
pub fn event_type_of<E: Serialize + ?Sized>(event: &E) -> Result<&'static str, BoxError> {
    event
        .serialize(NameOnly)
        .map_err(|e| -> BoxError { e.0.into() })
}

/// Decodes one domain event from its type name and payload. Returns `Ok(None)` when the
/// type name is not one of `E`'s variants.
pub fn decode_event<C: Codec, E: DeserializeOwned>(
    codec: &C,
    event_type: &str,
    payload: &[u8],
) -> Result<Option<E>, BoxError> {
    let unknown = Cell::new(false);
    let seed = VariantSeed::<E> {
        name: event_type,
        unknown: &unknown,
        _e: PhantomData,
    };
    match codec.decode_seed(payload, seed) {
        Ok(e) => Ok(Some(e)),
        Err(_) if unknown.get() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Decodes one domain event from its type name and any self-describing serde
/// deserializer (such as a `serde_json::Value`). `Ok(None)` for an unknown type name.
pub fn decode_event_from<'de, D, E>(content: D, event_type: &str) -> Result<Option<E>, BoxError>
where
    D: Deserializer<'de>,
    D::Error: Send + Sync + 'static,
    E: Deserialize<'de>,
{
    let unknown = Cell::new(false);
    let seed = VariantSeed::<E> {
        name: event_type,
        unknown: &unknown,
        _e: PhantomData,
    };
    match seed.deserialize(content) {
        Ok(e) => Ok(Some(e)),
        Err(_) if unknown.get() => Ok(None),
        Err(e) => Err(Box::new(e)),
    }
}

/// The type names a domain event enum can decode: its variants' serde names and their
/// aliases, as serde lists them.
pub fn event_type_names<E: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    let _ = E::deserialize(VariantProbe { out: &mut names });
    names
}

// ---------------------------------------------------------------------------
// Encoding: serialize only the content of the top-level variant.

struct VariantContent<'a, E: ?Sized> {
    event: &'a E,
    name: &'a Cell<Option<&'static str>>,
}

impl<E: Serialize + ?Sized> Serialize for VariantContent<'_, E> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.event.serialize(Forward {
            inner: s,
            name: self.name,
        })
    }
}

struct Forward<'a, S> {
    inner: S,
    name: &'a Cell<Option<&'static str>>,
}

fn not_enum<E: serde::ser::Error>() -> E {
    E::custom(NOT_AN_ENUM)
}

macro_rules! refuse {
    ($($method:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ret, Self::Error> { Err(not_enum()) })*
    };
}

impl<'a, S: Serializer> Serializer for Forward<'a, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Impossible<S::Ok, S::Error>;
    type SerializeTuple = Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = TupleVariant<S::SerializeTupleStruct>;
    type SerializeMap = Impossible<S::Ok, S::Error>;
    type SerializeStruct = Impossible<S::Ok, S::Error>;
    type SerializeStructVariant = StructVariant<S::SerializeStruct>;

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.name.set(Some(variant));
        self.inner.serialize_unit()
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.name.set(Some(variant));
        value.serialize(self.inner)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.name.set(Some(variant));
        Ok(TupleVariant(
            self.inner.serialize_tuple_struct(variant, len)?,
        ))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.name.set(Some(variant));
        Ok(StructVariant(self.inner.serialize_struct(variant, len)?))
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _v: &T) -> Result<S::Ok, S::Error> {
        Err(not_enum())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _v: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(not_enum())
    }

    refuse! {
        serialize_bool(bool) -> S::Ok;
        serialize_i8(i8) -> S::Ok;
        serialize_i16(i16) -> S::Ok;
        serialize_i32(i32) -> S::Ok;
        serialize_i64(i64) -> S::Ok;
        serialize_u8(u8) -> S::Ok;
        serialize_u16(u16) -> S::Ok;
        serialize_u32(u32) -> S::Ok;
        serialize_u64(u64) -> S::Ok;
        serialize_f32(f32) -> S::Ok;
        serialize_f64(f64) -> S::Ok;
        serialize_char(char) -> S::Ok;
        serialize_str(&str) -> S::Ok;
        serialize_bytes(&[u8]) -> S::Ok;
        serialize_none() -> S::Ok;
        serialize_unit() -> S::Ok;
        serialize_unit_struct(&'static str) -> S::Ok;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
    }
}

struct TupleVariant<T>(T);

impl<T: SerializeTupleStruct> serde::ser::SerializeTupleVariant for TupleVariant<T> {
    type Ok = T::Ok;
    type Error = T::Error;
    fn serialize_field<V: Serialize + ?Sized>(&mut self, v: &V) -> Result<(), T::Error> {
        self.0.serialize_field(v)
    }
    fn end(self) -> Result<T::Ok, T::Error> {
        self.0.end()
    }
}

struct StructVariant<T>(T);

impl<T: SerializeStruct> serde::ser::SerializeStructVariant for StructVariant<T> {
    type Ok = T::Ok;
    type Error = T::Error;
    fn serialize_field<V: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &V,
    ) -> Result<(), T::Error> {
        self.0.serialize_field(key, v)
    }
    fn skip_field(&mut self, key: &'static str) -> Result<(), T::Error> {
        self.0.skip_field(key)
    }
    fn end(self) -> Result<T::Ok, T::Error> {
        self.0.end()
    }
}

// A serializer that records the variant name and serializes nothing.
struct NameOnly;

#[derive(Debug)]
struct NameError(String);

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for NameError {}
impl serde::ser::Error for NameError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NameError(msg.to_string())
    }
}

struct NameOnlyVariant(&'static str);

impl serde::ser::SerializeTupleVariant for NameOnlyVariant {
    type Ok = &'static str;
    type Error = NameError;
    fn serialize_field<V: Serialize + ?Sized>(&mut self, _v: &V) -> Result<(), NameError> {
        Ok(())
    }
    fn end(self) -> Result<&'static str, NameError> {
        Ok(self.0)
    }
}

impl serde::ser::SerializeStructVariant for NameOnlyVariant {
    type Ok = &'static str;
    type Error = NameError;
    fn serialize_field<V: Serialize + ?Sized>(
        &mut self,
        _k: &'static str,
        _v: &V,
    ) -> Result<(), NameError> {
        Ok(())
    }
    fn end(self) -> Result<&'static str, NameError> {
        Ok(self.0)
    }
}

impl Serializer for NameOnly {
    type Ok = &'static str;
    type Error = NameError;
    type SerializeSeq = Impossible<&'static str, NameError>;
    type SerializeTuple = Impossible<&'static str, NameError>;
    type SerializeTupleStruct = Impossible<&'static str, NameError>;
    type SerializeTupleVariant = NameOnlyVariant;
    type SerializeMap = Impossible<&'static str, NameError>;
    type SerializeStruct = Impossible<&'static str, NameError>;
    type SerializeStructVariant = NameOnlyVariant;

    fn serialize_unit_variant(
        self,
        _n: &'static str,
        _i: u32,
        variant: &'static str,
    ) -> Result<&'static str, NameError> {
        Ok(variant)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _n: &'static str,
        _i: u32,
        variant: &'static str,
        _v: &T,
    ) -> Result<&'static str, NameError> {
        Ok(variant)
    }
    fn serialize_tuple_variant(
        self,
        _n: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<NameOnlyVariant, NameError> {
        Ok(NameOnlyVariant(variant))
    }
    fn serialize_struct_variant(
        self,
        _n: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<NameOnlyVariant, NameError> {
        Ok(NameOnlyVariant(variant))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _v: &T) -> Result<&'static str, NameError> {
        Err(not_enum())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _n: &'static str,
        _v: &T,
    ) -> Result<&'static str, NameError> {
        Err(not_enum())
    }
    refuse! {
        serialize_bool(bool) -> &'static str;
        serialize_i8(i8) -> &'static str;
        serialize_i16(i16) -> &'static str;
        serialize_i32(i32) -> &'static str;
        serialize_i64(i64) -> &'static str;
        serialize_u8(u8) -> &'static str;
        serialize_u16(u16) -> &'static str;
        serialize_u32(u32) -> &'static str;
        serialize_u64(u64) -> &'static str;
        serialize_f32(f32) -> &'static str;
        serialize_f64(f64) -> &'static str;
        serialize_char(char) -> &'static str;
        serialize_str(&str) -> &'static str;
        serialize_bytes(&[u8]) -> &'static str;
        serialize_none() -> &'static str;
        serialize_unit() -> &'static str;
        serialize_unit_struct(&'static str) -> &'static str;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
    }
}

// ---------------------------------------------------------------------------
// Decoding: present (type name, payload) to the enum's Deserialize as one variant.

struct VariantSeed<'a, E> {
    name: &'a str,
    unknown: &'a Cell<bool>,
    _e: PhantomData<fn() -> E>,
}

impl<'de, E: Deserialize<'de>> DeserializeSeed<'de> for VariantSeed<'_, E> {
    type Value = E;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<E, D::Error> {
        E::deserialize(Backward {
            inner: d,
            name: self.name,
            unknown: self.unknown,
        })
    }
}

struct Backward<'a, D> {
    inner: D,
    name: &'a str,
    unknown: &'a Cell<bool>,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Backward<'_, D> {
    type Error = D::Error;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, D::Error> {
        Err(serde::de::Error::custom(NOT_AN_ENUM))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// The error type of the variant-name deserializer: it remembers whether serde
/// rejected the name as an unknown variant.
#[derive(Debug)]
struct NameDeError {
    unknown_variant: bool,
    msg: String,
}

impl fmt::Display for NameDeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}
impl std::error::Error for NameDeError {}
impl serde::de::Error for NameDeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NameDeError {
            unknown_variant: false,
            msg: msg.to_string(),
        }
    }
    fn unknown_variant(variant: &str, _expected: &'static [&'static str]) -> Self {
        NameDeError {
            unknown_variant: true,
            msg: format!("unknown event type {variant:?}"),
        }
    }
}

impl<'de, D: Deserializer<'de>> serde::de::EnumAccess<'de> for Backward<'_, D> {
    type Error = D::Error;
    type Variant = Content<D>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Content<D>), D::Error> {
        let name_de: serde::de::value::StrDeserializer<'_, NameDeError> =
            self.name.into_deserializer();
        match seed.deserialize(name_de) {
            Ok(v) => Ok((v, Content(self.inner))),
            Err(e) => {
                if e.unknown_variant {
                    self.unknown.set(true);
                }
                Err(serde::de::Error::custom(e.msg))
            }
        }
    }
}

struct Content<D>(D);

impl<'de, D: Deserializer<'de>> serde::de::VariantAccess<'de> for Content<D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), D::Error> {
        serde::de::IgnoredAny::deserialize(self.0).map(|_| ())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, D::Error> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct("", fields, visitor)
    }
}

// ---------------------------------------------------------------------------
// Introspection: capture the variant names an enum declares.

struct VariantProbe<'a> {
    out: &'a mut &'static [&'static str],
}

#[derive(Debug)]
struct ProbeDone;
impl fmt::Display for ProbeDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe done")
    }
}
impl std::error::Error for ProbeDone {}
impl serde::de::Error for ProbeDone {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        ProbeDone
    }
}

impl<'de> Deserializer<'de> for VariantProbe<'_> {
    type Error = ProbeDone;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeDone> {
        *self.out = variants;
        Err(ProbeDone)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Placed {
        id: u32,
        items: Vec<String>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum Ev {
        #[serde(rename = "order.placed")]
        Placed(Placed),
        #[serde(rename = "order.paid")]
        Paid { amount: u64, note: Option<String> },
        #[serde(rename = "order.closed")]
        Closed,
        #[serde(rename = "order.pair")]
        Pair(u8, u8),
        #[serde(rename = "order.renamed", alias = "order.old_name")]
        Renamed { x: i32 },
    }

    fn round_trip(e: Ev) {
        let (name, bytes) = encode_event(&JsonCodec, &e).unwrap();
        assert_eq!(name, event_type_of(&e).unwrap());
        let back: Ev = decode_event(&JsonCodec, name, &bytes).unwrap().unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn every_variant_shape_round_trips() {
        round_trip(Ev::Placed(Placed {
            id: 1,
            items: vec!["a".into()],
        }));
        round_trip(Ev::Paid {
            amount: 3,
            note: None,
        });
        round_trip(Ev::Closed);
        round_trip(Ev::Pair(1, 2));
        round_trip(Ev::Renamed { x: -1 });
    }

    #[test]
    fn payload_is_only_the_content() {
        let (name, bytes) = encode_event(
            &JsonCodec,
            &Ev::Paid {
                amount: 3,
                note: Some("n".into()),
            },
        )
        .unwrap();
        assert_eq!(name, "order.paid");
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"amount":3,"note":"n"}"#
        );
    }

    #[test]
    fn unknown_types_are_none_and_bad_payloads_are_errors() {
        assert!(
            decode_event::<_, Ev>(&JsonCodec, "order.refunded", b"{}")
                .unwrap()
                .is_none()
        );
        assert!(decode_event::<_, Ev>(&JsonCodec, "order.paid", b"{\"amount\":").is_err());
        assert!(decode_event::<_, Ev>(&JsonCodec, "order.paid", b"{\"amount\":1} x").is_err());
        assert!(decode_event::<_, Ev>(&JsonCodec, "order.paid", b"\xff\xfe").is_err());
    }

    #[test]
    fn aliases_decode() {
        let e: Ev = decode_event(&JsonCodec, "order.old_name", b"{\"x\":4}")
            .unwrap()
            .unwrap();
        assert_eq!(e, Ev::Renamed { x: 4 });
    }

    #[test]
    fn names_are_listed() {
        assert_eq!(
            event_type_names::<Ev>(),
            &[
                "order.placed",
                "order.paid",
                "order.closed",
                "order.pair",
                "order.old_name",
                "order.renamed"
            ]
        );
    }

    #[test]
    fn non_enums_are_refused() {
        #[derive(Serialize)]
        struct NotEnum {
            a: u8,
        }
        assert!(encode_event(&JsonCodec, &NotEnum { a: 1 }).is_err());
        assert!(event_type_of(&NotEnum { a: 1 }).is_err());
        assert!(event_type_names::<Placed>().is_empty());
    }
}
