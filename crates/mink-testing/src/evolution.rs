//! Conformance tests for schema evolution: codecs mixed in one store, schema versions
//! stamped on every write, upcasting that looks the same on every read path, and typed
//! errors for payloads that cannot be read. They run against every store through
//! [`conformance_tests!`](crate::conformance_tests).

use std::sync::Arc;
use std::time::Duration;

use mink_es::codec::{MsgPackCodec, SerdeEvents, SerdeFormat};
use mink_es::prelude::*;
use mink_es::protobuf::ProstEvents;
use mink_es::schema::{SchemaRegistry, Upcaster};
use mink_es::{
    Aggregate, Error, EventDecoder, ExpectedVersion, FeedFilter, NewEvent, Position, ReplayMode,
    Repository, StoredEvent, StreamId, Subscription, SubscriptionOptions, Upcasting,
};

use crate::conformance::{StoreFactory, Tally, TallyEvent};

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbDeposited {
    #[prost(uint64, tag = "1")]
    amount: u64,
    #[prost(string, tag = "2")]
    note: String,
}

mink_es::prost_events! {
    /// Events of the Protobuf aggregate the suite uses.
    #[derive(Clone, Debug, PartialEq)]
    enum PbEvent {
        Deposited(PbDeposited) = "PbDeposited",
    }
}

#[derive(Default)]
struct PbAccount {
    balance: u64,
}

impl Aggregate for PbAccount {
    const TYPE: &'static str = "PbAccount";
    type Event = PbEvent;
    fn apply(&mut self, e: &PbEvent) {
        match e {
            PbEvent::Deposited(d) => self.balance += d.amount,
        }
    }
}

/// One store holds events written by JSON, MessagePack (per event type) and Protobuf;
/// each is stored with its codec tag and loads back.
pub async fn codecs_mix_in_one_store<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let mixed = Repository::<Tally, _>::new(store.clone()).with_codec(
        SerdeEvents::new(SerdeFormat::Json).with_format_for("TallyReset", SerdeFormat::MsgPack),
    );
    let mut t = mixed.load("mix").await.unwrap();
    t.record_all([
        TallyEvent::Added { n: 4 },
        TallyEvent::Reset,
        TallyEvent::Added { n: 3 },
    ]);
    mixed.save(&mut t).await.unwrap();
    // Written later by code that switched everything to MessagePack.
    let packed = Repository::<Tally, _>::new(store.clone())
        .with_codec(SerdeEvents::new(SerdeFormat::MsgPack));
    let mut t = packed.load("mix").await.unwrap();
    t.record(TallyEvent::Added { n: 10 });
    packed.save(&mut t).await.unwrap();

    let stored = store.read_stream(&sid("Tally-mix"), 1, 10).await.unwrap();
    let tags: Vec<&str> = stored.iter().map(|e| e.codec.as_str()).collect();
    assert_eq!(tags, ["json", "msgpack", "json", "msgpack"]);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&stored[3].payload).is_err(),
        "a binary payload"
    );
    let n: u64 = MsgPackCodec
        .decode::<serde_json::Value>(&stored[3].payload)
        .unwrap()["n"]
        .as_u64()
        .unwrap();
    assert_eq!(n, 10);
    // Either repository reads all of it.
    assert_eq!(mixed.load("mix").await.unwrap().state().total, 13);
    assert_eq!(packed.load("mix").await.unwrap().state().total, 13);

    let pb = Repository::<PbAccount, _, _>::with_event_codec(store.clone(), ProstEvents);
    let mut acc = pb.load("p1").await.unwrap();
    acc.record(PbEvent::Deposited(PbDeposited {
        amount: 7,
        note: "ü".into(),
    }));
    acc.record(PbEvent::Deposited(PbDeposited {
        amount: 8,
        note: String::new(),
    }));
    pb.save(&mut acc).await.unwrap();
    let stored = store
        .read_stream(&sid("PbAccount-p1"), 1, 10)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|e| e.codec == "protobuf" && e.event_type == "PbDeposited")
    );
    assert_eq!(pb.load("p1").await.unwrap().state().balance, 15);
}

fn tally_registry() -> Arc<SchemaRegistry> {
    // TallyAdded v1 stored `amount`; v2 renamed it to `n`; TallyIncremented was the
    // type's first name; a TallyBatch split into several TallyAdded; TallyDebug is gone.
    Arc::new(
        SchemaRegistry::builder()
            .event("TallyAdded", 2)
            .upcaster(Upcaster::value("TallyAdded", 1, |v| {
                let o = v.as_object_mut().ok_or("not an object")?;
                let amount = o.remove("amount").ok_or("no amount")?;
                o.insert("n".into(), amount);
                Ok(())
            }))
            .upcaster(Upcaster::rename("TallyIncremented", 1, "TallyAdded", 1))
            .upcaster(Upcaster::split("TallyBatch", 1, ["TallyAdded"], |v| {
                let ns = v["ns"].as_array().ok_or("no ns")?;
                Ok(ns
                    .iter()
                    .map(|n| ("TallyAdded".to_owned(), 2, serde_json::json!({ "n": n })))
                    .collect())
            }))
            .upcaster(Upcaster::drop_event("TallyDebug", 1))
            .build()
            .unwrap(),
    )
}

/// Saves stamp each event with its type's current schema version, whether or not an
/// upcaster exists for it.
pub async fn schema_versions_are_stamped<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let repo = Repository::<Tally, _>::new(store.clone()).with_schema(tally_registry());
    let mut t = repo.load("v").await.unwrap();
    t.record_all([TallyEvent::Added { n: 1 }, TallyEvent::Reset]);
    repo.save(&mut t).await.unwrap();
    let stored = store.read_stream(&sid("Tally-v"), 1, 10).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|e| (e.event_type.as_str(), e.schema_version))
            .collect::<Vec<_>>(),
        [("TallyAdded", 2), ("TallyReset", 1)]
    );
    // No upcasters at all: a declared version is still stamped.
    let plain = Repository::<Tally, _>::new(store.clone()).with_schema(Arc::new(
        SchemaRegistry::builder()
            .event_since("TallyReset", 4, 4)
            .build()
            .unwrap(),
    ));
    let mut t = plain.load("w").await.unwrap();
    t.record(TallyEvent::Reset);
    plain.save(&mut t).await.unwrap();
    let stored = store.read_stream(&sid("Tally-w"), 1, 10).await.unwrap();
    assert_eq!(stored[0].schema_version, 4);
}

async fn append_raw<S: EventStore>(store: &S, stream: &StreamId, events: Vec<NewEvent>) {
    store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .unwrap();
}

fn v1_added(amount: u64) -> NewEvent {
    NewEvent::json("TallyAdded", &serde_json::json!({ "amount": amount })).unwrap()
}

/// One stored v1 event looks the same through each read path: an aggregate load, a
/// stream read, a feed read, a filtered feed read, a subscription, and a decoder over
/// raw reads. So do renamed, split and dropped events.
pub async fn upcasting_looks_the_same_on_every_read_path<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let schema = tally_registry();
    let stream = sid("Tally-up");
    let packed_v1 = NewEvent::new(
        "TallyAdded",
        MsgPackCodec
            .encode(&serde_json::json!({ "amount": 6 }))
            .unwrap(),
    )
    .with_codec(MsgPackCodec::TAG);
    append_raw(
        &store,
        &stream,
        vec![
            v1_added(5),
            NewEvent::json("TallyIncremented", &serde_json::json!({ "amount": 1 })).unwrap(),
            NewEvent::json("TallyDebug", &serde_json::json!({ "x": 1 })).unwrap(),
            NewEvent::json("TallyBatch", &serde_json::json!({ "ns": [2, 3] })).unwrap(),
            packed_v1,
            NewEvent::json("TallyAdded", &serde_json::json!({ "n": 100 }))
                .unwrap()
                .with_schema_version(2),
        ],
    )
    .await;
    let want = vec![
        TallyEvent::Added { n: 5 },
        TallyEvent::Added { n: 1 },
        TallyEvent::Added { n: 2 },
        TallyEvent::Added { n: 3 },
        TallyEvent::Added { n: 6 },
        TallyEvent::Added { n: 100 },
    ];

    // 1. Aggregate load.
    let repo = Repository::<Tally, _>::new(store.clone()).with_schema(schema.clone());
    let t = repo.load("up").await.unwrap();
    assert_eq!(t.state().total, 117);
    assert_eq!(t.state().applied, 6);
    assert_eq!(
        t.version(),
        6,
        "the version counts stored events, dropped ones included"
    );

    let layered = Upcasting::new(store.clone(), schema.clone());
    let decoder = EventDecoder::<TallyEvent, _>::new(SerdeEvents::default(), ReplayMode::Strict);
    let decode_all = |events: &[StoredEvent]| -> Vec<TallyEvent> {
        events
            .iter()
            .flat_map(|e| decoder.decode(e).unwrap())
            .collect()
    };
    // 2. Stream read through the layer: today's type, version and shape.
    let read = layered.read_stream(&stream, 1, 100).await.unwrap();
    assert!(
        read.iter()
            .all(|e| e.event_type == "TallyAdded" && e.schema_version == 2),
        "{read:?}"
    );
    assert_eq!(decode_all(&read), want);
    assert_eq!(read[0].payload.as_ref(), br#"{"n":5}"#);
    assert_eq!(
        read[4].codec,
        MsgPackCodec::TAG,
        "re-encoded in its own codec"
    );
    // Split parts share the stored event's position and have distinct ids.
    assert_eq!(read[2].position, read[3].position);
    assert_ne!(read[2].id, read[3].id);
    // 3. Feed reads, unfiltered and filtered by today's type name.
    let feed = layered
        .read_feed(Position::START, 100, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!(decode_all(&feed.events), want);
    let by_type = layered
        .read_feed(
            Position::START,
            100,
            &FeedFilter::all().event_type("TallyAdded"),
        )
        .await
        .unwrap();
    assert_eq!(
        decode_all(&by_type.events),
        want,
        "stored under older names, read under today's"
    );
    // 4. A subscription, in pages of one stored event, stopped after every event and
    //    resumed from its checkpoint. The checkpoint passes a position only once every
    //    part of a split event was delivered, so resuming never skips a part (a part
    //    delivered before the stop comes again; its id says so).
    let opts = SubscriptionOptions::all()
        .batch_size(1)
        .poll_interval(Duration::from_millis(20));
    let mut seen: Vec<(mink_es::EventId, TallyEvent)> = Vec::new();
    let mut after = Position::START;
    let mut redelivered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < want.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscription stopped making progress: {seen:?}"
        );
        // Resume, take events until a new one arrives, stop.
        let mut sub = Subscription::new(layered.clone(), opts.clone().after(after));
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap()
                .unwrap();
            if seen.iter().any(|(id, _)| *id == e.id) {
                redelivered += 1;
                continue;
            }
            seen.push((e.id, decoder.decode(&e).unwrap().remove(0)));
            break;
        }
        after = sub.checkpoint();
    }
    assert_eq!(seen.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), want);
    assert_eq!(
        redelivered, 1,
        "only the first part of the split event came twice"
    );
    // 5. A decoder with the registry over raw (not upcast) reads.
    let raw = store.read_stream(&stream, 1, 100).await.unwrap();
    let with_schema = decoder.clone().with_schema(schema.clone());
    let from_raw: Vec<TallyEvent> = raw
        .iter()
        .flat_map(|e| with_schema.decode(e).unwrap())
        .collect();
    assert_eq!(from_raw, want);
}

/// Payloads that cannot be read give typed errors naming stream, version and type:
/// corrupt bytes, an unknown codec tag, a schema version newer than the code knows.
pub async fn unreadable_payloads_are_typed_errors<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let schema = tally_registry();
    let repo = Repository::<Tally, _>::new(store.clone()).with_schema(schema.clone());
    let layered = Upcasting::new(store.clone(), schema.clone());

    let s = sid("Tally-codec");
    append_raw(
        &store,
        &s,
        vec![NewEvent::new("TallyReset", "null").with_codec("xml".to_owned().into())],
    )
    .await;
    match repo.load("codec").await.unwrap_err() {
        Error::UnknownCodec {
            stream,
            version,
            event_type,
            codec,
        } => {
            assert_eq!(
                (stream, version, event_type.as_str(), codec.as_str()),
                (s.clone(), 1, "TallyReset", "xml")
            );
        }
        other => panic!("expected UnknownCodec, got {other:?}"),
    }

    let s = sid("Tally-future");
    append_raw(&store, &s, vec![v1_added(1).with_schema_version(3)]).await;
    match repo.load("future").await.unwrap_err() {
        Error::SchemaTooNew {
            stream,
            version,
            event_type,
            schema_version,
            known,
        } => {
            assert_eq!(
                (stream, version, event_type.as_str()),
                (s.clone(), 1, "TallyAdded")
            );
            assert_eq!((schema_version, known), (3, 2));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(matches!(
        layered.read_stream(&s, 1, 10).await,
        Err(Error::SchemaTooNew { .. })
    ));
    // Writing a version the registry does not know through the layer is refused.
    let err = layered
        .append(
            &s,
            ExpectedVersion::Any,
            vec![v1_added(1).with_schema_version(9)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");

    let s = sid("Tally-corrupt");
    append_raw(&store, &s, vec![v1_added(1)]).await;
    f.corrupt_payload(&store, &s, 1, b"{not json".to_vec())
        .await;
    match repo.load("corrupt").await.unwrap_err() {
        Error::Upcast {
            stream,
            version,
            event_type,
            ..
        } => {
            assert_eq!(
                (stream, version, event_type.as_str()),
                (s.clone(), 1, "TallyAdded")
            );
        }
        other => panic!("expected Upcast (the v1 upcaster cannot parse it), got {other:?}"),
    }
    let s = sid("Tally-corrupt2");
    append_raw(
        &store,
        &s,
        vec![
            NewEvent::json("TallyAdded", &serde_json::json!({ "n": 1 }))
                .unwrap()
                .with_schema_version(2),
        ],
    )
    .await;
    f.corrupt_payload(&store, &s, 1, vec![0xc1, 0xff]).await;
    match repo.load("corrupt2").await.unwrap_err() {
        Error::Decode {
            stream,
            version,
            event_type,
            ..
        } => {
            assert_eq!((stream, version, event_type.as_str()), (s, 1, "TallyAdded"));
        }
        other => panic!("expected Decode, got {other:?}"),
    }
}
