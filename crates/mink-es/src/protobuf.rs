//! Protobuf events: domain events whose payloads are prost messages.
//!
//! Declare the event enum with [`prost_events!`](crate::prost_events), one variant per
//! event type, each wrapping a prost message, and use [`ProstEvents`] as the
//! repository's event codec. Payloads are stored with the codec tag `protobuf`.
//!
//! ```
//! use mink_es::prost_events;
//!
//! #[derive(Clone, PartialEq, prost::Message)]
//! pub struct OrderPlaced {
//!     #[prost(string, tag = "1")]
//!     pub customer: String,
//!     #[prost(uint64, tag = "2")]
//!     pub total: u64,
//! }
//!
//! #[derive(Clone, PartialEq, prost::Message)]
//! pub struct OrderShipped {}
//!
//! prost_events! {
//!     #[derive(Clone, Debug, PartialEq)]
//!     pub enum OrderEvent {
//!         Placed(OrderPlaced) = "OrderPlaced",
//!         Shipped(OrderShipped) = "OrderShipped",
//!     }
//! }
//!
//! use mink_es::codec::{Document, EventCodec};
//! use mink_es::protobuf::ProstEvents;
//! let e = OrderEvent::Placed(OrderPlaced { customer: "ada".into(), total: 5 });
//! let enc = ProstEvents.encode(&e).unwrap();
//! assert_eq!((enc.event_type, enc.codec.as_str()), ("OrderPlaced", "protobuf"));
//! let doc = Document::Payload { codec: enc.codec, bytes: enc.payload.into() };
//! let back: Option<OrderEvent> = ProstEvents.decode("OrderPlaced", doc).unwrap();
//! assert_eq!(back, Some(e));
//! ```

pub use prost;

use crate::codec::{DecodeFailure, Document, Encoded, EventCodec};
use crate::{BoxError, CodecTag};

/// The tag of Protobuf payloads.
pub const TAG: CodecTag = CodecTag::from_static("protobuf");

/// A domain event enum whose variants wrap prost messages. Implement it with
/// [`prost_events!`](crate::prost_events).
pub trait ProstEvent: Sized + Send + Sync + 'static {
    /// The stable type name of this event.
    fn event_type(&self) -> &'static str;

    /// The event's message, encoded.
    fn encode_payload(&self) -> Vec<u8>;

    /// Decodes an event of type `event_type`; `Ok(None)` for a type this enum does not
    /// have.
    fn decode_payload(event_type: &str, bytes: &[u8]) -> Result<Option<Self>, prost::DecodeError>;

    /// Every type name of this enum.
    fn event_types() -> &'static [&'static str];
}

/// The [`EventCodec`] of [`ProstEvent`] enums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProstEvents;

impl<E: ProstEvent> EventCodec<E> for ProstEvents {
    fn encode(&self, event: &E) -> Result<Encoded, BoxError> {
        Ok(Encoded {
            event_type: event.event_type(),
            codec: TAG,
            payload: event.encode_payload(),
        })
    }

    fn decode(&self, event_type: &str, doc: Document) -> Result<Option<E>, DecodeFailure> {
        match doc {
            Document::Payload { codec, bytes } if codec == TAG => {
                E::decode_payload(event_type, &bytes).map_err(|e| DecodeFailure::Invalid(Box::new(e)))
            }
            Document::Payload { codec, .. } => Err(DecodeFailure::UnknownCodec(codec)),
            Document::Event(event) => match event.into_any().downcast::<E>() {
                Ok(e) => Ok(Some(*e)),
                Err(_) => Err(DecodeFailure::Invalid(
                    "a typed upcaster produced a value of another event type".into(),
                )),
            },
            Document::Value(_) => Err(DecodeFailure::Invalid(
                "Protobuf events cannot be decoded from a JSON value; upcast them with Upcaster::raw".into(),
            )),
        }
    }
}

/// Declares an enum of Protobuf events and implements [`ProstEvent`] for it: each
/// variant wraps one prost message and names its stable type.
#[macro_export]
macro_rules! prost_events {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident($msg:ty) = $type_name:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* #[doc = concat!("The `", $type_name, "` event.")] $variant($msg) ),+
        }

        impl $crate::protobuf::ProstEvent for $name {
            fn event_type(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $type_name ),+
                }
            }

            fn encode_payload(&self) -> ::std::vec::Vec<u8> {
                match self {
                    $( Self::$variant(m) => $crate::protobuf::prost::Message::encode_to_vec(m) ),+
                }
            }

            fn decode_payload(
                event_type: &str,
                bytes: &[u8],
            ) -> ::std::result::Result<::std::option::Option<Self>, $crate::protobuf::prost::DecodeError> {
                match event_type {
                    $( $type_name => <$msg as $crate::protobuf::prost::Message>::decode(bytes)
                        .map(|m| ::std::option::Option::Some(Self::$variant(m))), )+
                    _ => ::std::result::Result::Ok(::std::option::Option::None),
                }
            }

            fn event_types() -> &'static [&'static str] {
                &[$($type_name),+]
            }
        }
    };
}
