use super::*;
use crate::finished::WorkerInfo;
use crate::finished::strategies::finished;
use crate::frame::{decode_frame, decode_shared, encode};
use bytes::BytesMut;
use proptest::prelude::*;

fn round_trip<M: Serialize + serde::de::DeserializeOwned>(msg: &M) -> M {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf).expect("encodes");
    let body = decode_frame(&mut buf, usize::MAX).expect("valid").expect("complete");
    decode_shared(&body.freeze()).expect("decodes")
}

fn kind() -> impl Strategy<Value = TaskKind> {
    (any::<String>(), any::<u64>(), any::<String>(), any::<bool>()).prop_map(
        |(name, fingerprint, signature, asks)| TaskKind {
            name,
            fingerprint,
            signature,
            request: asks.then(|| Request {
                cpus: 2,
                memory: Some(1 << 30),
                custom: vec![("gpu".into(), 1)],
            }),
            label: asks.then(|| "__main__.f2".into()),
            stream: asks,
            priority: if asks { -3 } else { 0 },
        },
    )
}

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..5000).prop_map(Bytes::from)
}

fn submission(id: u64, timeout_ms: Option<u64>, retries: u32) -> Submission {
    Submission {
        id: DriverTaskId::new(id),
        kind: KindIndex::new(0),
        args: Bytes::new(),
        timeout_ms,
        retries,
        unrunnable_limit_ms: None,
        inputs: None,
    }
}

#[test]
fn per_task_fields_at_their_default_are_left_out() {
    let task = submission(1, None, 0);
    let bytes = rmp_serde::to_vec_named(&task).expect("encodes");
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("retries") && !text.contains("timeout_ms"), "{bytes:?}");
    assert!(!text.contains("unrunnable"), "{bytes:?}");
    let timed = submission(1, Some(5), 2);
    let text =
        String::from_utf8_lossy(&rmp_serde::to_vec_named(&timed).expect("encodes")).into_owned();
    assert!(text.contains("retries") && text.contains("timeout_ms"));
}

proptest! {
    #[test]
    fn hello_round_trips(version in any::<u32>(), host in any::<String>(), workers in any::<u32>(),
                         tasks in proptest::collection::vec(kind(), 0..4), name in any::<String>(),
                         conn in any::<u64>(), server in any::<u64>()) {
        let nonce = Bytes::from(vec![7u8; 32]);
        let capacity = Some(Capacity { cpus: workers, memory: 1 << 34, custom: vec![("gpu".into(), 2)] });
        let agent = Hello { version, role: Role::Agent { host, workers, tasks, heartbeat_ms: 5000, agent_id: 1, replaces: 7, cache_size: 1 << 30, capacity, ends_in_ms: 60_000, allocation: "1234".into() }, nonce: nonce.clone() };
        prop_assert_eq!(round_trip(&agent), agent);
        let driver = Hello { version, role: Role::Driver { name, session: "s".into(), attach: false, heartbeat_ms: 5000 }, nonce: nonce.clone() };
        prop_assert_eq!(round_trip(&driver), driver);
        let challenge = HelloReply::Challenge(Challenge { nonce: nonce.clone(), proof: nonce.clone() });
        prop_assert_eq!(round_trip(&challenge), challenge);
        let proof = Proof { proof: nonce };
        prop_assert_eq!(round_trip(&proof), proof);
        let welcome = HelloReply::Welcome(Welcome {
            version, connection: ConnId::new(conn), task_limit: 5, server_id: ServerId::new(server), run: ServerId::new(server ^ 1),
        });
        prop_assert_eq!(round_trip(&welcome), welcome);
    }

    #[test]
    fn driver_messages_round_trip(id in any::<u64>(), kinds in proptest::collection::vec(kind(), 0..3),
                                  index in any::<u32>(), args in bytes(),
                                  timeout_ms in proptest::option::of(any::<u64>()),
                                  acks in proptest::collection::vec(any::<u64>(), 0..10),
                                  run in finished(), host in proptest::option::of(any::<String>())) {
        let (id, kind) = (DriverTaskId::new(id), KindIndex::new(index));
        let inputs = timeout_ms.map(|_| Box::new(crate::inputs::Inputs {
            framing: crate::inputs::Framing::Prefixed(args.clone()),
            parts: vec![crate::inputs::InputPart::Value(args.clone()), crate::inputs::InputPart::Result(id)],
            after: vec![(id, true)],
        }));
        let tasks = vec![Submission { id, kind, args: args.clone(), timeout_ms, retries: 2, unrunnable_limit_ms: timeout_ms, inputs }];
        let submit = FromDriver::Submit { kinds, tasks };
        prop_assert_eq!(round_trip(&submit), submit);
        let plain = FromDriver::Submit { kinds: vec![], tasks: vec![Submission { id, kind, args: Bytes::new(), timeout_ms: None, retries: 0, unrunnable_limit_ms: None, inputs: None }] };
        prop_assert_eq!(round_trip(&plain), plain);
        let accepted = ToDriver::Accepted { count: id.get() };
        prop_assert_eq!(round_trip(&accepted), accepted);
        let ack = FromDriver::Ack(acks.into_iter().map(DriverTaskId::new).collect());
        prop_assert_eq!(round_trip(&ack), ack);
        let report = ToDriver::Results(vec![
            Report { id, worker: Some(WorkerInfo { pid: 7, host, devices: Default::default() }), run },
            Report::unstarted(id, crate::Outcome::Value(args)),
        ]);
        prop_assert_eq!(round_trip(&report), report);
    }

    #[test]
    fn agent_messages_round_trip(key in any::<u64>(), kind in any::<u32>(), args in bytes(), run in finished(), seq in proptest::option::of(any::<u64>())) {
        let key = TaskKey::new(key);
        let request = seq.map(|_| Box::new(Request { cpus: 3, memory: None, custom: Vec::new() }));
        let stream = seq.is_some();
        let lines = crate::Lines { stream: crate::StdStream::Stderr, text: args.clone() };
        let tasks = vec![Assignment { key, kind: KindIndex::new(kind), args, timeout_ms: Some(5), retries: 1, seq, request, stream, inputs: seq.map(|s| Box::new(crate::inputs::Inputs { framing: crate::inputs::Framing::Array, parts: vec![crate::inputs::InputPart::Shared(s), crate::inputs::InputPart::File("/dev/shm/x".into())], after: vec![] })) }];
        let assigned = ToAgent::Run(tasks);
        prop_assert_eq!(round_trip(&assigned), assigned);
        let output = FromAgent::Output(vec![AgentOutput { key, lines: lines.clone() }]);
        prop_assert_eq!(round_trip(&output), output);
        let id = DriverTaskId::new(key.get());
        let output = ToDriver::Output(vec![TaskOutput { id, host: "h".into(), lines }]);
        prop_assert_eq!(round_trip(&output), output);
        let worker = Some(WorkerInfo { pid: 1, host: None, devices: Default::default() });
        let done = FromAgent::Done(vec![Report { id: key, worker, run }]);
        prop_assert_eq!(round_trip(&done), done);
        let started = FromAgent::Started(vec![key]);
        prop_assert_eq!(round_trip(&started), started);
        let reattach = FromAgent::Reattach(vec![key.get(), 3]);
        prop_assert_eq!(round_trip(&reattach), reattach);
        let reattached = ToAgent::Reattached(vec![(3, key)]);
        prop_assert_eq!(round_trip(&reattached), reattached);
    }

    #[test]
    fn random_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let body = Bytes::from(data);
        let _ = decode_shared::<Preface>(&body);
        let _ = decode_shared::<PrefaceReply>(&body);
        let _ = decode_shared::<Hello>(&body);
        let _ = decode_shared::<HelloReply>(&body);
        let _ = decode_shared::<Proof>(&body);
        let _ = decode_shared::<FromDriver>(&body);
        let _ = decode_shared::<FromAgent>(&body);
        let _ = decode_shared::<ToDriver>(&body);
        let _ = decode_shared::<ToAgent>(&body);
    }
}

#[test]
fn a_mismatch_round_trips() {
    let mismatch = ToDriver::Mismatch(Mismatch {
        task: "python".into(),
        signature: "fn python() [cloudpickle 3.1]".into(),
        agents: vec![AgentSignature { host: "n1".into(), signature: "fn python() [0.0.0]".into() }],
    });
    assert_eq!(round_trip(&mismatch), mismatch);
}
