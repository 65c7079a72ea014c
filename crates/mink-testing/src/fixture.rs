//! Given/when/then tests for aggregates, in the spirit of cqrs-es's `TestFramework`.
//!
//! ```
//! use mink_es::Aggregate;
//! use mink_testing::AggregateFixture;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
//! enum DoorEvent {
//!     #[serde(rename = "DoorOpened")]
//!     Opened,
//!     #[serde(rename = "DoorClosed")]
//!     Closed,
//! }
//!
//! #[derive(Default, Debug)]
//! struct Door { open: bool }
//!
//! impl Aggregate for Door {
//!     const TYPE: &'static str = "Door";
//!     type Event = DoorEvent;
//!     fn apply(&mut self, e: &DoorEvent) { self.open = matches!(e, DoorEvent::Opened); }
//! }
//!
//! impl Door {
//!     fn open(&self) -> Result<Vec<DoorEvent>, &'static str> {
//!         if self.open { Err("already open") } else { Ok(vec![DoorEvent::Opened]) }
//!     }
//! }
//!
//! AggregateFixture::<Door>::given_no_previous_events()
//!     .when(Door::open)
//!     .then_expect_events([DoorEvent::Opened])
//!     .then_state(|d| assert!(d.open));
//!
//! AggregateFixture::<Door>::given([DoorEvent::Opened])
//!     .when(Door::open)
//!     .then_expect_error("already open");
//! ```

use std::fmt::Debug;

use mink_es::codec::{JsonCodec, decode_event, encode_event};
use mink_es::{Aggregate, DomainEvent};

/// The "given" step: an aggregate built from past events.
pub struct AggregateFixture<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateFixture<A> {
    /// Starts from an aggregate that has no events.
    pub fn given_no_previous_events() -> Self {
        AggregateFixture {
            state: A::default(),
        }
    }

    /// Starts from an aggregate that has these events.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for e in events {
            state.apply(&e);
        }
        AggregateFixture { state }
    }

    /// The "when" step: runs a decision against the state.
    pub fn when<E>(self, decide: impl FnOnce(&A) -> Result<Vec<A::Event>, E>) -> Outcome<A, E> {
        let result = decide(&self.state);
        let mut state = self.state;
        if let Ok(events) = &result {
            for e in events {
                state.apply(e);
            }
        }
        Outcome { result, state }
    }
}

/// The "then" step: assertions on what the decision produced.
pub struct Outcome<A: Aggregate, E> {
    result: Result<Vec<A::Event>, E>,
    state: A,
}

impl<A: Aggregate, E: Debug> Outcome<A, E>
where
    A::Event: PartialEq + Debug,
{
    /// Asserts the decision succeeded with exactly these events, and that each one
    /// survives encoding and decoding under its stored type name (JSON).
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> Self
    where
        A::Event: DomainEvent,
    {
        let this = self.then_expect_exactly(expected);
        if let Ok(events) = &this.result {
            for e in events {
                assert_round_trips(e);
            }
        }
        this
    }

    /// Asserts the decision succeeded with exactly these events (for event types with
    /// another codec than serde, such as Protobuf events).
    #[track_caller]
    pub fn then_expect_exactly(self, expected: impl IntoIterator<Item = A::Event>) -> Self {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match &self.result {
            Ok(events) => assert_eq!(events, &expected, "the decision produced other events"),
            Err(err) => panic!("expected events {expected:?}, but the decision failed: {err:?}"),
        }
        self
    }

    /// Asserts the decision succeeded without producing events.
    #[track_caller]
    pub fn then_expect_no_events(self) -> Self {
        self.then_expect_exactly(Vec::new())
    }

    /// Asserts the decision failed with this error.
    #[track_caller]
    pub fn then_expect_error(self, expected: E) -> Self
    where
        E: PartialEq,
    {
        match &self.result {
            Err(err) => assert_eq!(err, &expected, "the decision failed with another error"),
            Ok(events) => {
                panic!("expected error {expected:?}, but the decision produced {events:?}")
            }
        }
        self
    }

    /// Asserts the decision failed with an error that satisfies `pred`.
    #[track_caller]
    pub fn then_expect_error_matches(self, pred: impl FnOnce(&E) -> bool) -> Self {
        match &self.result {
            Err(err) => assert!(pred(err), "the error {err:?} does not match"),
            Ok(events) => panic!("expected an error, but the decision produced {events:?}"),
        }
        self
    }

    /// Runs assertions on the state after the produced events were applied.
    #[track_caller]
    pub fn then_state(self, check: impl FnOnce(&A)) -> Self {
        check(&self.state);
        self
    }

    /// The produced events, or the error.
    pub fn result(&self) -> &Result<Vec<A::Event>, E> {
        &self.result
    }
}

/// Asserts that an event encodes to a type name and payload that decode back to it.
#[track_caller]
pub fn assert_round_trips<Ev: DomainEvent + PartialEq + Debug>(event: &Ev) {
    let (name, payload) = encode_event(&JsonCodec, event)
        .unwrap_or_else(|e| panic!("event {event:?} does not encode: {e}"));
    let back: Option<Ev> = decode_event(&JsonCodec, name, &payload)
        .unwrap_or_else(|e| panic!("event {event:?} (type {name:?}) does not decode: {e}"));
    assert_eq!(
        back.as_ref(),
        Some(event),
        "event type {name:?} does not round-trip through its stored form"
    );
}
