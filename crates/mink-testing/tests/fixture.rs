//! The fixture's own tests: each assertion must fail when it should.

use mink_testing::AggregateFixture;
use mink_testing::conformance::{Tally, TallyEvent};

fn add(n: u64) -> impl FnOnce(&Tally) -> Result<Vec<TallyEvent>, String> {
    move |t| {
        if t.total + n > 10 {
            Err(format!("over 10: {}", t.total + n))
        } else {
            Ok(vec![TallyEvent::Added { n }])
        }
    }
}

#[test]
fn events_and_state() {
    AggregateFixture::<Tally>::given([TallyEvent::Added { n: 3 }])
        .when(add(4))
        .then_expect_events([TallyEvent::Added { n: 4 }])
        .then_state(|t| assert_eq!(t.total, 7));
}

#[test]
fn errors() {
    AggregateFixture::<Tally>::given([TallyEvent::Added { n: 9 }])
        .when(add(4))
        .then_expect_error("over 10: 13".to_owned())
        .then_state(|t| assert_eq!(t.total, 9));
    AggregateFixture::<Tally>::given_no_previous_events()
        .when(|_| Ok::<_, String>(vec![]))
        .then_expect_no_events();
}

#[test]
#[should_panic(expected = "the decision produced other events")]
fn wrong_events_fail() {
    AggregateFixture::<Tally>::given_no_previous_events()
        .when(add(1))
        .then_expect_events([TallyEvent::Added { n: 2 }]);
}

#[test]
#[should_panic(expected = "but the decision failed")]
fn unexpected_error_fails() {
    AggregateFixture::<Tally>::given([TallyEvent::Added { n: 10 }])
        .when(add(1))
        .then_expect_events([TallyEvent::Added { n: 1 }]);
}

#[test]
#[should_panic(expected = "expected error")]
fn missing_error_fails() {
    AggregateFixture::<Tally>::given_no_previous_events()
        .when(add(1))
        .then_expect_error("nope".to_owned());
}

#[test]
#[should_panic(expected = "does not match")]
fn error_predicate_fails() {
    AggregateFixture::<Tally>::given([TallyEvent::Added { n: 10 }])
        .when(add(1))
        .then_expect_error_matches(|e| e.contains("under"));
}

#[test]
#[should_panic(expected = "does not round-trip")]
fn lossy_events_fail() {
    use serde::{Deserialize, Serialize};
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum Lossy {
        #[serde(rename = "Lossy")]
        Lossy {
            #[serde(skip)]
            hidden: u8,
        },
    }
    mink_testing::fixture::assert_round_trips(&Lossy::Lossy { hidden: 1 });
}
