//! The result table's unit tests.

use super::*;
use blitzen_common::{DecodeTarget, TaskError};

use std::time::Duration;

use crate::results::Fetch;

fn done(seq: u64, value: u64) -> Report<DriverTaskId> {
    let bytes = blitzen_common::task::encode_value(&value).expect("encodes");
    Report::unstarted(DriverTaskId::new(seq), Outcome::Value(bytes))
}

#[test]
fn fetch_returns_in_the_order_asked_and_clears_by_default() {
    let table = ResultTable::new();
    let ids: Vec<TaskId<u64>> = (0..3).map(|_| table.register("t", "sig").0).collect();
    table.complete(vec![done(3, 30), done(1, 10), done(2, 20)]);
    let order = [ids[2], ids[0], ids[1]];
    let got: Vec<u64> = table
        .fetch(&order, Fetch::keep())
        .expect("known")
        .iter()
        .map(|r| r.decode().expect("value"))
        .collect();
    assert_eq!(got, [30, 10, 20]);
    assert_eq!(table.fetch(&order, Fetch::default()).expect("kept").len(), 3);
    assert!(matches!(
        table.fetch(&ids[..1], Fetch::default()),
        Err(DispatchError::AlreadyFetched(1))
    ));
}

/// A wait for results that another thread fetches meanwhile ends with `AlreadyFetched` as soon
/// as it finds them gone, instead of waiting on for them.
#[test]
fn a_wait_ends_when_another_thread_fetches_what_it_waits_for() {
    let table = std::sync::Arc::new(ResultTable::new());
    let ids: Vec<TaskId<u64>> = (0..2).map(|_| table.register("t", "sig").0).collect();
    let waiting = {
        let (table, ids) = (table.clone(), [ids[1], ids[0]]);
        std::thread::spawn(move || table.fetch(&ids, Fetch::keep().within(Duration::from_secs(30))))
    };
    while table.lock().sleepers == 0 {
        std::thread::yield_now();
    }
    table.complete(vec![done(1, 10)]);
    assert_eq!(table.fetch(&ids[..1], Fetch::default()).expect("done").len(), 1);
    table.complete(vec![done(2, 20)]);
    let ended = waiting.join().expect("the waiting thread");
    assert!(matches!(ended, Err(DispatchError::AlreadyFetched(1))), "{ended:?}");
}

#[test]
fn an_id_asked_for_twice_in_one_fetch_comes_back_twice() {
    let table = ResultTable::new();
    let ids: Vec<TaskId<u64>> = (0..2).map(|_| table.register("t", "sig").0).collect();
    table.complete(vec![done(1, 10), done(2, 20)]);
    let twice = [ids[1], ids[0], ids[1]];
    let got: Vec<u64> = (table.fetch(&twice, Fetch::default()).expect("known").iter())
        .map(|r| r.decode().expect("value"))
        .collect();
    assert_eq!(got, [20, 10, 20]);
    assert!(matches!(
        table.fetch(&ids[..1], Fetch::default()),
        Err(DispatchError::AlreadyFetched(1))
    ));
}

#[test]
fn foreign_ids_and_wait_limits_are_errors_not_hangs() {
    let a = ResultTable::new();
    let b = ResultTable::new();
    let (id, _) = b.register::<u64>("t", "sig");
    assert!(matches!(a.fetch(&[id], Fetch::default()), Err(DispatchError::UnknownTask(1))));
    let err = b.fetch(&[id], Fetch::default().within(Duration::from_millis(20)));
    assert!(matches!(err, Err(DispatchError::WaitTimedOut { pending: 1, total: 1, .. })));
    b.note(&[id.task()], "no agent can run it");
    let err = b.fetch(&[id], Fetch::default().within(Duration::from_millis(1)));
    assert!(format!("{:?}", err).contains("no agent can run it"), "{err:?}");
    b.close(Outcome::Cancelled { reason: "closing".into() });
    let r = b.fetch(&[id], Fetch::default()).expect("settled");
    assert!(matches!(r[0].outcome(), Err(TaskError::Cancelled { .. })));
    let (late, closed) = b.register::<u64>("t", "sig");
    assert!(closed);
    assert!(matches!(
        b.fetch(&[late], Fetch::default()).expect("settled")[0].outcome(),
        Err(TaskError::Cancelled { .. })
    ));
}

#[test]
fn a_second_result_is_dropped_and_counted_whether_or_not_the_first_was_fetched() {
    let table = ResultTable::new();
    let ids: Vec<TaskId<u64>> = (0..2).map(|_| table.register("t", "sig").0).collect();
    table.complete(vec![done(1, 10), done(2, 20)]);
    assert_eq!(table.stats().duplicates, 0);
    table.complete(vec![done(1, 11)]);
    let first = table.fetch(&ids[..1], Fetch::default()).expect("done");
    assert_eq!(first[0].decode::<u64>().expect("value"), 10, "the first result stays");
    table.complete(vec![done(1, 12), done(2, 21)]);
    let stats = table.stats();
    assert_eq!((stats.duplicates, stats.pending), (3, 0));
    let second = table.fetch(&ids[1..], Fetch::default()).expect("done");
    assert_eq!(second[0].decode::<u64>().expect("value"), 20);
}

#[test]
fn a_value_of_the_wrong_type_is_a_decode_error() {
    let table = ResultTable::new();
    let (id, _) = table.register::<String>("t", "sig");
    table.complete(vec![done(1, 5)]);
    let r = table.fetch(&[id], Fetch::default()).expect("known");
    let err = r[0].decode::<String>().expect_err("u64 is not a String");
    assert!(matches!(err, TaskError::Decode { what: DecodeTarget::Result, .. }), "{err}");
}
