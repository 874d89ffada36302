use super::*;
use blitzen_protocol::Outcome;
use blitzen_protocol::ids::DriverTaskId;

fn dir(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!("blitzen-store-{}-{label}", std::process::id()))
}

/// Every change waiting for a commit is paid once per queued task or result.
#[test]
fn a_change_stays_small() {
    assert!(std::mem::size_of::<Change>() <= 72, "{} bytes", std::mem::size_of::<Change>());
}

fn record(seq: u64) -> TaskRecord {
    TaskRecord {
        kind: 0,
        args: Bytes::from_static(b"\x01\x02"),
        timeout_ms: Some(5),
        retries: 1,
        unrunnable_limit_ms: 0,
        seq,
        inputs: None,
        attempts: 0,
    }
}

#[test]
fn what_is_committed_is_there_after_reopening_and_the_id_stays() {
    let path = dir("reopen");
    let _ = std::fs::remove_dir_all(&path);
    let (mut store, id, loaded) = Store::open(&path, ServerId::new(7)).expect("opens");
    assert_eq!(id, ServerId::new(7));
    assert!(loaded.tasks.is_empty());
    let s = || "s1".to_string();
    let report = Report::unstarted(DriverTaskId::new(2), Outcome::Lost { reason: "r".into() });
    store
        .apply(&[
            Change::Session {
                session: s(),
                record: SessionRecord { name: "d".into(), accepted: 3, next_id: 4 },
            },
            Change::Tasks {
                session: s(),
                tasks: vec![(1, record(10)), (2, record(11)), (3, record(12))],
            },
            Change::Kind {
                number: 0,
                kind: Box::new(TaskKind {
                    name: "t".into(),
                    fingerprint: 1,
                    signature: "fn t()".into(),
                    request: Some(blitzen_protocol::Request {
                        cpus: 2,
                        memory: Some(1 << 30),
                        custom: vec![("gpu".into(), 1)],
                    }),
                    label: Some("__main__.f2".into()),
                    stream: true,
                    priority: 7,
                }),
            },
            Change::Attempts { session: s(), id: 3, attempts: 2 },
            Change::Attempts { session: s(), id: 2, attempts: 1 },
            Change::TaskEnded { session: s(), id: 2, attempted: true },
            Change::Agent { id: 9, host: "a".into() },
            Change::Agent { id: 10, host: "b".into() },
            Change::AgentGone { id: 9 },
            Change::Result { session: s(), id: 2, report: Box::new(report) },
            Change::Session {
                session: "gone".into(),
                record: SessionRecord { name: "g".into(), accepted: 1, next_id: 2 },
            },
            Change::Tasks { session: "gone".into(), tasks: vec![(1, record(13))] },
            Change::SessionEnded { session: "gone".into() },
        ])
        .expect("commits");
    assert!(matches!(Store::open(&path, ServerId::new(8)), Err(StoreError::InUse(_))));
    drop(store);
    let (_store, id, loaded) = Store::open(&path, ServerId::new(8)).expect("reopens");
    assert_eq!(id, ServerId::new(7), "the server keeps its id");
    assert_eq!(loaded.sessions.len(), 1);
    assert_eq!(loaded.sessions[0].1.accepted, 3);
    let ids: Vec<u64> = loaded.tasks.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids, [1, 3]);
    assert_eq!(loaded.tasks[0].2.args, Bytes::from_static(b"\x01\x02"));
    let attempts: Vec<u32> = loaded.tasks.iter().map(|(_, _, t)| t.attempts).collect();
    assert_eq!(attempts, [0, 2], "attempts saved, and gone with their task");
    assert_eq!(loaded.results.len(), 1);
    assert_eq!(loaded.kinds.len(), 1);
    let request = loaded.kinds[0].request.as_ref().map(|r| r.to_string());
    assert_eq!(request.as_deref(), Some("2 CPUs, 1.0 GiB memory, gpu=1"), "kept with its kind");
    assert_eq!(loaded.agents, [(10, "b".to_string())]);
    assert_eq!(loaded.next_seq, 14, "above every seq stored, the ended ones too");
    let _ = std::fs::remove_dir_all(&path);
}

#[test]
fn a_file_of_another_format_is_refused_untouched() {
    let path = dir("garbage");
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("dir");
    std::fs::write(path.join(FILE), b"not a database at all").expect("write");
    let err = Store::open(&path, ServerId::new(1)).expect_err("refused");
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert_eq!(std::fs::read(path.join(FILE)).expect("read"), b"not a database at all");
    let _ = std::fs::remove_dir_all(&path);
}

#[test]
fn a_database_of_another_layout_is_refused_untouched() {
    let path = dir("layout");
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("dir");
    {
        let db = Database::create(path.join(FILE)).expect("creates");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META).expect("meta").insert("server_id", 5).expect("insert");
        txn.open_table(META).expect("meta").insert("format", FORMAT + 1).expect("insert");
        txn.commit().expect("commit");
    }
    let err = Store::open(&path, ServerId::new(1)).expect_err("refused");
    assert!(err.to_string().contains("another version of blitzen-server"), "{err}");
    // redb marks an open file in its header, so compare what the tables hold.
    let db = Database::create(path.join(FILE)).expect("opens");
    let txn = db.begin_read().expect("txn");
    let meta = txn.open_table(META).expect("meta");
    let value = |k: &str| meta.get(k).expect("get").map(|v| v.value());
    assert_eq!((value("format"), value("server_id")), (Some(FORMAT + 1), Some(5)));
    assert!(txn.open_table(TASKS).is_err(), "no table was added");
    let _ = std::fs::remove_dir_all(&path);
}
