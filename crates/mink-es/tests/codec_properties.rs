//! Property tests: every event value round-trips through every codec, and every v1
//! payload upcast to today's version equals the event written by hand in today's shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use mink_es::codec::{Document, EventCodec, SerdeEvents, SerdeFormat, decode_event, encode_event};
use mink_es::schema::{SchemaRegistry, Upcaster};
use mink_es::{
    Codec, EventDecoder, EventId, EventType, Metadata, Position, ReplayMode, StoredEvent, StreamId,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Line {
    sku: String,
    qty: u32,
    price: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum ShopEvent {
    #[serde(rename = "OrderPlaced")]
    Placed {
        customer: String,
        lines: Vec<Line>,
        note: Option<String>,
        tags: BTreeMap<String, i32>,
        express: bool,
        weight: f64,
    },
    #[serde(rename = "OrderPaid")]
    Paid(u64),
    #[serde(rename = "OrderCancelled")]
    Cancelled,
    #[serde(rename = "OrderSplit")]
    Split(String, u8),
}

fn line() -> impl Strategy<Value = Line> {
    (".{0,12}", any::<u32>(), any::<i64>()).prop_map(|(sku, qty, price)| Line { sku, qty, price })
}

fn shop_event() -> impl Strategy<Value = ShopEvent> {
    prop_oneof![
        (
            any::<String>(),
            prop::collection::vec(line(), 0..4),
            prop::option::of(".{0,20}"),
            prop::collection::btree_map(".{0,6}", any::<i32>(), 0..4),
            any::<bool>(),
            // Finite floats: JSON has no NaN or infinity.
            -1e300f64..1e300,
        )
            .prop_map(
                |(customer, lines, note, tags, express, weight)| ShopEvent::Placed {
                    customer,
                    lines,
                    note,
                    tags,
                    express,
                    weight,
                }
            ),
        any::<u64>().prop_map(ShopEvent::Paid),
        Just(ShopEvent::Cancelled),
        (any::<String>(), any::<u8>()).prop_map(|(s, n)| ShopEvent::Split(s, n)),
    ]
}

fn formats() -> Vec<SerdeFormat> {
    vec![SerdeFormat::Json, SerdeFormat::MsgPack]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn serde_events_round_trip_in_every_format(event in shop_event()) {
        for format in formats() {
            let (name, bytes) = encode_event(&format, &event).unwrap();
            let back: Option<ShopEvent> = decode_event(&format, name, &bytes).unwrap();
            prop_assert_eq!(back.as_ref(), Some(&event), "{:?}", format);
            // And through the event codec, which picks the format from the stored tag.
            let codec = SerdeEvents::new(format);
            let enc = EventCodec::<ShopEvent>::encode(&codec, &event).unwrap();
            let doc = Document::Payload { codec: enc.codec, bytes: enc.payload.into() };
            let back: Option<ShopEvent> = SerdeEvents::default().decode(enc.event_type, doc).unwrap();
            prop_assert_eq!(back, Some(event.clone()));
        }
    }

    #[test]
    fn corrupt_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), name in "Order(Placed|Paid|Cancelled|Split|Other)") {
        for format in formats() {
            // Any result is fine, as long as it is a result.
            let _ = decode_event::<_, ShopEvent>(&format, &name, &bytes);
        }
    }
}

// ---------------------------------------------------------------------------
// Upcasting: v1 -> v2 (a value upcaster) -> v3 (a typed upcaster straight into the
// domain event), checked against the v3 event built by hand from the same inputs.

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct PlacedV1 {
    customer_id: String,
    total_cents: u64,
    items: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct PlacedV2 {
    customer: String,
    total_cents: u64,
    items: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum OrderV3 {
    #[serde(rename = "OrderPlaced")]
    Placed {
        customer: String,
        total: Money,
        items: Vec<Item>,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Money {
    units: u64,
    cents: u8,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Item {
    sku: String,
}

fn hand_written_v3(v1: &PlacedV1) -> OrderV3 {
    OrderV3::Placed {
        customer: v1.customer_id.clone(),
        total: Money {
            units: v1.total_cents / 100,
            cents: (v1.total_cents % 100) as u8,
        },
        items: v1.items.iter().map(|s| Item { sku: s.clone() }).collect(),
    }
}

fn registry(typed_last_step: bool) -> Arc<SchemaRegistry> {
    let v1_to_v2 = Upcaster::value("OrderPlaced", 1, |v| {
        let o = v.as_object_mut().ok_or("not an object")?;
        let c = o.remove("customer_id").ok_or("no customer_id")?;
        o.insert("customer".into(), c);
        Ok(())
    });
    let convert = |v2: PlacedV2| OrderV3::Placed {
        customer: v2.customer,
        total: Money {
            units: v2.total_cents / 100,
            cents: (v2.total_cents % 100) as u8,
        },
        items: v2.items.into_iter().map(|sku| Item { sku }).collect(),
    };
    let v2_to_v3 = if typed_last_step {
        Upcaster::to_event("OrderPlaced", 2, convert)
    } else {
        Upcaster::typed("OrderPlaced", 2, move |v2: PlacedV2| match convert(v2) {
            OrderV3::Placed {
                customer,
                total,
                items,
            } => serde_json::json!({
                "customer": customer, "total": total, "items": items,
            }),
        })
    };
    Arc::new(
        SchemaRegistry::builder()
            .event("OrderPlaced", 3)
            .upcaster(v1_to_v2)
            .upcaster(v2_to_v3)
            .build()
            .unwrap(),
    )
}

fn stored(format: SerdeFormat, v1: &PlacedV1) -> StoredEvent {
    StoredEvent {
        id: EventId::new(),
        stream_id: StreamId::new("Order-1").unwrap(),
        version: 1,
        position: Position::new(0, 1),
        event_type: EventType::from_static("OrderPlaced"),
        schema_version: 1,
        codec: format.tag(),
        payload: format.encode(v1).unwrap().into(),
        metadata: Metadata::default(),
        recorded_at: mink_es::now_micros(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn v1_upcast_to_v3_equals_the_hand_written_v3(
        customer_id in any::<String>(),
        total_cents in any::<u64>(),
        items in prop::collection::vec(".{0,10}", 0..5),
    ) {
        let v1 = PlacedV1 { customer_id, total_cents, items };
        let want = hand_written_v3(&v1);
        for typed_last_step in [true, false] {
            let decoder = EventDecoder::<OrderV3, _>::new(SerdeEvents::default(), ReplayMode::Strict)
                .with_schema(registry(typed_last_step));
            for format in formats() {
                // Through the decoder (aggregate loads).
                let got = decoder.decode(&stored(format, &v1)).unwrap();
                prop_assert_eq!(&got, &vec![want.clone()]);
                // Through the store layer (feed reads, subscriptions): bytes in today's
                // shape, in the payload's own codec.
                let mut out = Vec::new();
                mink_es::upcast::upcast_stored(&registry(typed_last_step), stored(format, &v1), &mut out).unwrap();
                prop_assert_eq!(out.len(), 1);
                prop_assert_eq!(out[0].schema_version, 3);
                prop_assert_eq!(&out[0].codec, &format.tag());
                let plain = EventDecoder::<OrderV3, _>::new(SerdeEvents::default(), ReplayMode::Strict);
                prop_assert_eq!(plain.decode(&out[0]).unwrap(), vec![want.clone()]);
            }
        }
    }
}

#[cfg(feature = "protobuf")]
mod protobuf {
    use super::*;
    use mink_es::protobuf::ProstEvents;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Address {
        #[prost(string, tag = "1")]
        pub city: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Registered {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(uint64, tag = "2")]
        pub age: u64,
        #[prost(sint64, tag = "3")]
        pub balance: i64,
        #[prost(bool, tag = "4")]
        pub vip: bool,
        #[prost(string, repeated, tag = "5")]
        pub tags: Vec<String>,
        #[prost(bytes = "vec", tag = "6")]
        pub avatar: Vec<u8>,
        #[prost(message, optional, tag = "7")]
        pub address: Option<Address>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Closed {}

    mink_es::prost_events! {
        #[derive(Clone, Debug, PartialEq)]
        pub enum Member {
            Registered(Registered) = "MemberRegistered",
            Closed(Closed) = "MemberClosed",
        }
    }

    fn member() -> impl Strategy<Value = Member> {
        prop_oneof![
            (
                any::<String>(),
                any::<u64>(),
                any::<i64>(),
                any::<bool>(),
                prop::collection::vec(any::<String>(), 0..3),
                prop::collection::vec(any::<u8>(), 0..16),
                prop::option::of(any::<String>()),
            )
                .prop_map(|(name, age, balance, vip, tags, avatar, city)| {
                    Member::Registered(Registered {
                        name,
                        age,
                        balance,
                        vip,
                        tags,
                        avatar,
                        address: city.map(|city| Address { city }),
                    })
                }),
            Just(Member::Closed(Closed {})),
        ]
    }

    proptest! {
        #[test]
        fn prost_events_round_trip(event in member()) {
            let enc = ProstEvents.encode(&event).unwrap();
            prop_assert_eq!(enc.codec.as_str(), "protobuf");
            let doc = Document::Payload { codec: enc.codec, bytes: enc.payload.into() };
            let back: Option<Member> = ProstEvents.decode(enc.event_type, doc).unwrap();
            prop_assert_eq!(back, Some(event));
        }
    }

    #[test]
    fn unknown_types_and_codecs() {
        let doc = Document::Payload {
            codec: mink_es::protobuf::TAG,
            bytes: bytes::Bytes::new(),
        };
        assert!(
            EventCodec::<Member>::decode(&ProstEvents, "Nope", doc)
                .unwrap()
                .is_none()
        );
        let doc = Document::Payload {
            codec: mink_es::CodecTag::JSON,
            bytes: bytes::Bytes::from_static(b"{}"),
        };
        assert!(matches!(
            EventCodec::<Member>::decode(&ProstEvents, "MemberClosed", doc),
            Err(mink_es::codec::DecodeFailure::UnknownCodec(_))
        ));
    }
}
