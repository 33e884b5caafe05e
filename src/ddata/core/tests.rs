use super::antientropy::PUT_OFF_ROUNDS;
use super::*;
use crate::codec;
use crate::ddata::wire::Envelope;
use crate::{GCounter, ORSet, OpBased};

fn core(name: &str, config: CoreConfig) -> ReplicatorCore {
    let mut core = ReplicatorCore::new(
        name,
        ReplicaId::new(name, 1),
        Arc::new(TypeRegistry::with_builtins()),
        config,
        7,
    );
    core.start();
    core
}

fn sends(outputs: &[Output]) -> Vec<(&str, &PeerMessage)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send { to, message } => Some((to.as_str(), message)),
            _ => None,
        })
        .collect()
}

/// Delivers every send in `outputs` from `from` to `to` through the codec,
/// returning what `to` does in answer.
fn deliver(from: &ReplicatorCore, to: &mut ReplicatorCore, outputs: Vec<Output>) -> Vec<Output> {
    let mut answers = Vec::new();
    for output in outputs {
        if let Output::Send {
            to: target,
            message,
        } = output
        {
            assert_eq!(target, to.node());
            let bytes = codec::encode(&Envelope {
                from: from.node().into(),
                message,
            })
            .unwrap();
            let envelope: Envelope = codec::decode(&bytes).unwrap();
            answers.extend(to.handle_message(&envelope.from, envelope.message));
        }
    }
    answers
}

/// Delivers `outputs` of `from` to `to`, then the answers back, and so on
/// until both are quiet; returns every message with the node that sent it.
fn converse(
    from: &mut ReplicatorCore,
    to: &mut ReplicatorCore,
    outputs: Vec<Output>,
) -> Vec<(String, PeerMessage)> {
    let mut log = Vec::new();
    let (mut sender, mut receiver) = (from, to);
    let mut pending = outputs;
    while !sends(&pending).is_empty() {
        for (_, message) in sends(&pending) {
            log.push((sender.node().to_string(), message.clone()));
        }
        pending = deliver(sender, receiver, pending);
        std::mem::swap(&mut sender, &mut receiver);
    }
    log
}

/// The keys of the entries sent by `node` in `log`, sorted, with repeats.
fn entries_sent_by<'a>(log: &'a [(String, PeerMessage)], node: &str) -> Vec<&'a str> {
    let mut keys: Vec<&str> = log
        .iter()
        .filter(|(from, _)| from == node)
        .flat_map(|(_, message)| match message {
            PeerMessage::Entries { entries, .. } => {
                entries.iter().map(|e| e.key.as_str()).collect()
            }
            _ => Vec::new(),
        })
        .collect();
    keys.sort_unstable();
    keys
}

fn increment(
    core: &mut ReplicatorCore,
    key: &Key<GCounter>,
    level: WriteConsistency,
) -> Vec<Output> {
    core.update(1, key, level, |c, me| c.apply(c.increment(me, 1)))
        .unwrap()
}

#[test]
fn a_lone_update_is_pushed_at_once_and_a_burst_collects_until_the_window_closes() {
    let mut a = core("a", CoreConfig::default());
    a.peer_up("b");
    a.peer_up("c");
    a.peer_down("c");
    let first = increment(&mut a, &Key::new("hits"), WriteConsistency::Local);
    assert!(first
        .iter()
        .any(|e| matches!(e, Output::WriteDone { result: Ok(_), .. })));
    let targets: Vec<&str> = sends(&first).iter().map(|(to, _)| *to).collect();
    assert_eq!(targets, ["b"], "unreachable c catches up by anti-entropy");

    let second = increment(&mut a, &Key::new("hits"), WriteConsistency::Local);
    let third = increment(&mut a, &Key::new("misses"), WriteConsistency::Local);
    assert!(
        sends(&second).is_empty() && sends(&third).is_empty(),
        "the window is open"
    );
    let pushed = a.handle_timer(Timer::Push);
    match &sends(&pushed)[..] {
        [("b", PeerMessage::Deltas { deltas, .. })] => {
            let keys: Vec<&str> = deltas.iter().map(|d| d.key.as_str()).collect();
            assert_eq!(keys, ["hits", "misses"]);
        }
        other => panic!("one message with both keys expected, got {other:?}"),
    }
    assert!(sends(&a.handle_timer(Timer::Push)).is_empty());
    let after_quiet = increment(&mut a, &Key::new("hits"), WriteConsistency::Local);
    assert_eq!(
        sends(&after_quiet).len(),
        1,
        "the window closed: pushed at once again"
    );
}

#[test]
fn a_change_is_notified_at_once_and_a_burst_once_per_interval() {
    let mut a = core("a", CoreConfig::default());
    let hits = Key::new("hits");
    let notified = |outputs: &[Output]| -> Vec<Vec<String>> {
        outputs
            .iter()
            .filter_map(|e| match e {
                Output::Notify { keys } => Some(keys.clone()),
                _ => None,
            })
            .collect()
    };
    let first = increment(&mut a, &hits, WriteConsistency::Local);
    assert_eq!(notified(&first), [["hits".to_string()]]);
    let second = increment(&mut a, &hits, WriteConsistency::Local);
    let third = increment(&mut a, &hits, WriteConsistency::Local);
    assert!(notified(&second).is_empty() && notified(&third).is_empty());
    assert_eq!(
        notified(&a.handle_timer(Timer::Notify)),
        [["hits".to_string()]]
    );
    assert!(a.handle_timer(Timer::Notify).is_empty());
}

#[test]
fn a_deleted_key_refuses_updates_and_wins_merges() {
    let (mut a, mut b) = (
        core("a", CoreConfig::default()),
        core("b", CoreConfig::default()),
    );
    let hits = Key::new("hits");
    increment(&mut b, &hits, WriteConsistency::Local);
    a.delete(1, &hits, WriteConsistency::Local).unwrap();
    let err = a
        .update(2, &hits, WriteConsistency::Local, |c, me| {
            c.apply(c.increment(me, 1))
        })
        .unwrap_err();
    assert!(matches!(err, Error::Deleted { .. }), "{err}");
    assert!(matches!(
        a.delete(3, &hits, WriteConsistency::Local),
        Err(Error::Deleted { .. })
    ));

    b.peer_up("a");
    let pushed = b.handle_timer(Timer::Push);
    deliver(&b, &mut a, pushed);
    assert!(
        matches!(a.lookup("hits"), Lookup::Deleted),
        "a live value cannot undo a delete"
    );

    a.peer_up("b");
    rounds_pass(&mut [&mut a, &mut b], 2);
    let summary = a.handle_timer(Timer::Gossip);
    converse(&mut a, &mut b, summary);
    assert!(matches!(b.lookup("hits"), Lookup::Deleted));
}

#[test]
fn a_key_keeps_its_type() {
    let mut a = core("a", CoreConfig::default());
    increment(&mut a, &Key::new("hits"), WriteConsistency::Local);
    let as_set: Key<ORSet<String>> = Key::new("hits");
    let err = a
        .update(2, &as_set, WriteConsistency::Local, |s, me| {
            s.apply(s.add(me, "x".into()))
        })
        .unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err}");
    assert!(a.get(&as_set).is_err());
    assert_eq!(
        a.get(&Key::<GCounter>::new("hits"))
            .unwrap()
            .unwrap()
            .value(),
        1
    );
}

#[test]
fn a_value_too_large_for_a_message_is_refused_and_leaves_the_old_value() {
    let config = CoreConfig {
        max_message_bytes: 4_096,
        ..CoreConfig::default()
    };
    let mut a = core("a", config);
    let key: Key<ORSet<String>> = Key::new("big");
    let mut last_ok = 0;
    let mut refused = None;
    for i in 0..1_000 {
        let result = a.update(i, &key, WriteConsistency::Local, |s, me| {
            s.apply(s.add(me, format!("element number {i:05}")))
        });
        match result {
            Ok(_) => last_ok = i,
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    let err = refused.expect("the set outgrows 4 KiB");
    assert!(
        matches!(err, Error::ValueTooLarge { limit, .. } if limit < 4_096),
        "{err}"
    );
    assert_eq!(a.get(&key).unwrap().unwrap().len() as u64, last_ok + 1);
}

#[test]
fn what_a_replica_received_counts_against_its_own_next_update() {
    let config = CoreConfig {
        max_message_bytes: 4_096,
        ..CoreConfig::default()
    };
    let (mut a, mut b) = (core("a", config.clone()), core("b", config));
    a.peer_up("b");
    b.peer_up("a");
    let key: Key<ORSet<String>> = Key::new("big");
    // b fills the set as far as the budget lets it; a only receives deltas,
    // so it never measured the value itself.
    for i in 0.. {
        let Ok(pushed) = b.update(1, &key, WriteConsistency::Local, |s, me| {
            s.apply(s.add(me, format!("element number {i:05}")))
        }) else {
            break;
        };
        deliver(&b, &mut a, pushed);
        b.handle_timer(Timer::Push);
    }
    assert_eq!(a.get(&key).unwrap(), b.get(&key).unwrap());
    let before = a.get(&key).unwrap().unwrap().clone();
    let err = a
        .update(2, &key, WriteConsistency::Local, |s, me| {
            s.apply(s.add(me, "x".repeat(200)))
        })
        .unwrap_err();
    assert!(matches!(err, Error::ValueTooLarge { .. }), "{err}");
    assert_eq!(a.get(&key).unwrap().unwrap(), &before);
}

/// Lets `rounds` gossip rounds pass on `cores`, dropping what they send.
fn rounds_pass(cores: &mut [&mut ReplicatorCore], rounds: usize) {
    for _ in 0..rounds {
        for core in cores.iter_mut() {
            core.handle_timer(Timer::Gossip);
        }
    }
}

/// Two cores holding the same `count` counters, `a` knowing `b` as a peer.
fn converged_pair(count: usize) -> (ReplicatorCore, ReplicatorCore, Vec<Key<GCounter>>) {
    let (mut a, mut b) = (
        core("a", CoreConfig::default()),
        core("b", CoreConfig::default()),
    );
    let keys: Vec<Key<GCounter>> = (0..count).map(|i| Key::new(format!("k{i}"))).collect();
    for key in &keys {
        increment(&mut a, key, WriteConsistency::Local);
        let value = a.get(key).unwrap().unwrap().clone();
        b.update(0, key, WriteConsistency::Local, |c, _| c.merge(&value))
            .unwrap();
    }
    a.peer_up("b");
    (a, b, keys)
}

#[test]
fn anti_entropy_moves_only_the_keys_that_differ() {
    let (mut a, mut b, shared) = converged_pair(100);
    increment(&mut a, &shared[3], WriteConsistency::Local);
    increment(&mut b, &Key::new("only-b"), WriteConsistency::Local);
    increment(&mut a, &Key::new("only-a"), WriteConsistency::Local);
    // The changes are older than the round before the exchange: their
    // deltas cannot be on their way any more.
    rounds_pass(&mut [&mut a, &mut b], 2);

    let summary = a.handle_timer(Timer::Gossip);
    let log = converse(&mut a, &mut b, summary);
    // A digest says that two states differ, not which is newer: both travel.
    assert_eq!(entries_sent_by(&log, "a"), ["k3", "only-a"]);
    assert_eq!(entries_sent_by(&log, "b"), ["k3", "only-b"]);
    for key in shared
        .iter()
        .chain([&Key::new("only-a"), &Key::new("only-b")])
    {
        assert_eq!(a.get(key).unwrap(), b.get(key).unwrap(), "{key}");
    }
}

#[test]
fn both_sides_of_a_key_that_differs_end_with_the_merge() {
    let (mut a, mut b, shared) = converged_pair(50);
    increment(&mut a, &shared[7], WriteConsistency::Local);
    b.update(0, &shared[7], WriteConsistency::Local, |c, _| {
        c.apply(c.increment(&ReplicaId::new("b", 1), 5))
    })
    .unwrap();
    rounds_pass(&mut [&mut a, &mut b], 2);
    let summary = a.handle_timer(Timer::Gossip);
    let log = converse(&mut a, &mut b, summary);
    assert_eq!(entries_sent_by(&log, "a"), ["k7"]);
    assert_eq!(entries_sent_by(&log, "b"), ["k7"]);
    assert_eq!(a.get(&shared[7]).unwrap().unwrap().value(), 7);
    assert_eq!(a.get(&shared[7]).unwrap(), b.get(&shared[7]).unwrap());
}

#[test]
fn an_idle_round_costs_one_small_message_whatever_the_number_of_keys() {
    let (mut a, mut b, _) = converged_pair(20_000);
    let summary = a.handle_timer(Timer::Gossip);
    let bytes = wire_bytes(&summary);
    let log = converse(&mut a, &mut b, summary);
    assert_eq!(log.len(), 1, "nothing differs: no answer");
    assert!(bytes < 1_000, "{bytes} bytes");
}

#[test]
fn one_changed_key_among_many_costs_about_one_bucket_of_digests() {
    let (mut a, mut b, shared) = converged_pair(20_000);
    increment(&mut b, &shared[12_345], WriteConsistency::Local);
    rounds_pass(&mut [&mut a, &mut b], 2);
    let summary = a.handle_timer(Timer::Gossip);
    let log = converse(&mut a, &mut b, summary);
    assert_eq!(entries_sent_by(&log, "b"), ["k12345"]);
    assert_eq!(entries_sent_by(&log, "a"), ["k12345"]);
    let listed: usize = log
        .iter()
        .map(|(_, message)| match message {
            PeerMessage::Digests { digests, .. } => digests.len(),
            _ => 0,
        })
        .sum();
    // 20,000 keys in 4096 buckets: about 5 a bucket.
    assert!(listed <= 30, "{listed} digests listed");
    assert_eq!(
        a.get(&shared[12_345]).unwrap(),
        b.get(&shared[12_345]).unwrap()
    );
}

#[test]
fn a_joiner_receives_each_key_once_from_two_holders() {
    let (mut h1, mut h2, keys) = converged_pair(3_000);
    let mut joiner = core("j", CoreConfig::default());
    // The holders start exchanges with the joiner as it comes up (their
    // names sort first), and the joiner answers both.
    let from_h1 = h1.peer_up("j");
    let from_h2 = h2.peer_up("j");
    joiner.peer_up("a");
    joiner.peer_up("b");
    let log1 = converse(&mut h1, &mut joiner, from_h1);
    let log2 = converse(&mut h2, &mut joiner, from_h2);
    let received = entries_sent_by(&log1, "a").len() + entries_sent_by(&log2, "b").len();
    assert_eq!(received, keys.len(), "each key arrives once");
    for key in &keys {
        assert_eq!(joiner.get(key).unwrap(), h1.get(key).unwrap(), "{key}");
    }
    // And one more round finds nothing to do.
    let summary = joiner.handle_timer(Timer::Gossip);
    let to = match &sends(&summary)[..] {
        [(to, _)] => to.to_string(),
        other => panic!("{other:?}"),
    };
    let holder = if to == "a" { &mut h1 } else { &mut h2 };
    assert_eq!(converse(&mut joiner, holder, summary).len(), 1);
}

#[test]
fn hostile_anti_entropy_messages_change_nothing() {
    let (mut a, mut b, shared) = converged_pair(10);
    let before = a.get(&shared[0]).unwrap().cloned();
    for message in [
        PeerMessage::Summary { groups: vec![1; 3] },
        PeerMessage::Buckets {
            hashes: vec![(u16::MAX, 1), (60_000, 2)],
        },
        PeerMessage::Request {
            keys: vec!["nope".into()],
            buckets: vec![u16::MAX],
        },
        PeerMessage::Digests {
            buckets: vec![u16::MAX, 9_999],
            digests: Vec::new(),
        },
    ] {
        let answer = a.handle_message("b", message);
        assert!(sends(&answer).is_empty(), "{answer:?}");
    }
    assert_eq!(a.get(&shared[0]).unwrap().cloned(), before);
    let summary = a.handle_timer(Timer::Gossip);
    assert_eq!(converse(&mut a, &mut b, summary).len(), 1);
}

#[test]
fn durable_keys_are_persisted_before_the_write_is_reported_or_sent() {
    let config = CoreConfig {
        durable: KeySelection::Matching {
            names: BTreeSet::new(),
            prefixes: vec!["cart/".into()],
        },
        ..CoreConfig::default()
    };
    let mut a = core("a", config);
    a.peer_up("b");
    let outputs = increment(
        &mut a,
        &Key::new("cart/alice"),
        WriteConsistency::To {
            n: 2,
            timeout: Duration::from_secs(1),
        },
    );
    let persist = outputs
        .iter()
        .position(|e| matches!(e, Output::Persist { .. }));
    let send = outputs
        .iter()
        .position(|e| matches!(e, Output::Send { .. }));
    assert!(persist.is_some() && persist < send, "{outputs:?}");

    let plain = increment(&mut a, &Key::new("hits"), WriteConsistency::Local);
    assert!(!plain.iter().any(|e| matches!(e, Output::Persist { .. })));
}

#[test]
fn a_write_that_misses_its_level_times_out_but_stands_locally() {
    let mut a = core("a", CoreConfig::default());
    a.peer_up("b");
    a.peer_down("c");
    let key = Key::new("hits");
    let outputs = increment(
        &mut a,
        &key,
        WriteConsistency::All {
            timeout: Duration::from_millis(50),
        },
    );
    let deadline = outputs
        .iter()
        .find_map(|e| match e {
            Output::Schedule {
                timer: timer @ Timer::Deadline(_),
                ..
            } => Some(*timer),
            _ => None,
        })
        .expect("a deadline is scheduled");
    let mut b = core("b", CoreConfig::default());
    let acks = deliver(&a, &mut b, outputs);
    assert!(
        a.handle_message("b", sends(&acks)[0].1.clone()).is_empty(),
        "two of three acknowledged: not done yet"
    );
    let timed_out = a.handle_timer(deadline);
    assert!(matches!(
        &timed_out[..],
        [Output::WriteDone {
            result: Err(Error::Timeout {
                reached: 2,
                required: 3,
                ..
            }),
            ..
        }]
    ));
    assert_eq!(a.get(&key).unwrap().unwrap().value(), 1);
}

#[test]
fn a_bad_entry_is_rejected_alone_and_changes_nothing() {
    let mut a = core("a", CoreConfig::default());
    let good = {
        let mut counter = GCounter::new();
        counter.apply(counter.increment(&ReplicaId::new("b", 1), 4));
        WireEntry {
            key: "good".into(),
            value: WireValue::Live {
                tag: "GCounter".into(),
                state: codec::encode(&counter).unwrap(),
            },
            seq: 0,
            lifetime: None,
        }
    };
    let garbage = WireEntry {
        key: "bad".into(),
        value: WireValue::Live {
            tag: "GCounter".into(),
            state: vec![codec::WIRE_VERSION, 0xc1, 0xff],
        },
        seq: 0,
        lifetime: None,
    };
    let unknown = WireEntry {
        key: "alien".into(),
        value: WireValue::Live {
            tag: "NoSuchType".into(),
            state: vec![codec::WIRE_VERSION],
        },
        seq: 0,
        lifetime: None,
    };
    a.handle_message(
        "b",
        PeerMessage::Entries {
            epoch: 1,
            entries: vec![garbage, good, unknown],
        },
    );
    assert_eq!(a.stats().rejected_entries, 2);
    assert_eq!(a.keys().collect::<Vec<_>>(), ["good"]);
    assert_eq!(
        a.get(&Key::<GCounter>::new("good"))
            .unwrap()
            .unwrap()
            .value(),
        4
    );
}

#[test]
fn a_majority_read_merges_the_answers_and_repairs_the_replicas_behind() {
    let (mut a, mut b, mut c) = (
        core("a", CoreConfig::default()),
        core("b", CoreConfig::default()),
        core("c", CoreConfig::default()),
    );
    let key = Key::new("hits");
    increment(&mut b, &key, WriteConsistency::Local);
    for (core, peers) in [
        (&mut a, ["b", "c"]),
        (&mut b, ["a", "c"]),
        (&mut c, ["a", "b"]),
    ] {
        for peer in peers {
            core.peer_up(peer);
        }
    }
    let outputs = a
        .read(9, &key, ReadConsistency::majority(Duration::from_secs(1)))
        .unwrap();
    let to_b: Vec<Output> = outputs
        .into_iter()
        .filter(|e| matches!(e, Output::Send { to, .. } if to == "b"))
        .collect();
    let answer = deliver(&a, &mut b, to_b);
    let done = deliver(&b, &mut a, answer);
    let result = done.into_iter().find_map(|e| match e {
        Output::ReadDone { request: 9, result } => Some(result),
        _ => None,
    });
    let (snapshot, answered) = result
        .expect("b's answer completes a majority of 3")
        .unwrap();
    assert_eq!(answered, ["a", "b"]);
    assert_eq!(
        snapshot
            .into_typed::<GCounter>("hits")
            .unwrap()
            .unwrap()
            .value(),
        1
    );
    assert_eq!(
        a.get(&key).unwrap().unwrap().value(),
        1,
        "the local replica is repaired"
    );
}

/// Nodes "a" and "b", each knowing the other is up.
fn pair() -> [ReplicatorCore; 2] {
    let Ok(pair) = <[ReplicatorCore; 2]>::try_from(connected(&["a", "b"])) else {
        unreachable!("two names make two cores")
    };
    pair
}

fn connected(names: &[&str]) -> Vec<ReplicatorCore> {
    names
        .iter()
        .map(|name| {
            let mut core = core(name, CoreConfig::default());
            for peer in names.iter().filter(|peer| *peer != name) {
                core.peer_up(peer);
            }
            core
        })
        .collect()
}

fn add(core: &mut ReplicatorCore, key: &Key<ORSet<String>>, member: String) -> Vec<Output> {
    core.update(1, key, WriteConsistency::Local, move |set, me| {
        set.apply(set.add(me, member))
    })
    .unwrap()
}

/// The messages in `outputs`, encoded as they would travel.
fn wire_bytes(outputs: &[Output]) -> usize {
    sends(outputs)
        .iter()
        .map(|(_, message)| {
            codec::encode(&Envelope {
                from: "a".into(),
                message: (*message).clone(),
            })
            .unwrap()
            .len()
        })
        .sum()
}

#[test]
fn an_update_of_a_large_set_travels_as_its_operation() {
    let [a, b] = &mut pair();
    let key: Key<ORSet<String>> = Key::new("presence");
    for i in 0..10_000 {
        let pushed = add(a, &key, format!("session-{i:05}"));
        let answer = deliver(a, b, pushed);
        deliver(b, a, answer);
        a.handle_timer(Timer::Push);
    }
    let pushed = add(a, &key, "one more".into());
    let bytes = wire_bytes(&pushed);
    assert!(bytes < 200, "{bytes} bytes for one add to a set of 10,000");
    assert!(
        sends(&deliver(a, b, pushed)).is_empty(),
        "applied without asking"
    );
    assert_eq!(a.get(&key).unwrap(), b.get(&key).unwrap());
    assert_eq!(b.stats().missing_deltas, 0);
    assert_eq!(b.stats().deltas_applied, 10_001);
}

/// Only the messages of `outputs` (timers dropped).
fn only_sends(outputs: Vec<Output>) -> Vec<Output> {
    outputs
        .into_iter()
        .filter(|output| matches!(output, Output::Send { .. }))
        .collect()
}

#[test]
fn a_large_key_that_keeps_changing_is_compared_less_often() {
    use super::antientropy::PUT_OFF_BYTES_PER_ROUND;
    // The rounds in which a key changing every round is compared anyway.
    let compared_in = |encoded_len: usize| -> Vec<u64> {
        let mut entry = Entry::new("presence", Slot::Deleted);
        entry.encoded(encoded_len);
        entry.folded_in = 0;
        let mut compared = Vec::new();
        for round in 1..=200 {
            entry.changed_in = round;
            if !entry.put_off(round) {
                compared.push(round);
                entry.folded_in = round;
            }
        }
        compared
    };
    assert_eq!(compared_in(1_000), [30, 60, 90, 120, 150, 180]);
    assert_eq!(
        compared_in(20 * PUT_OFF_BYTES_PER_ROUND),
        [30, 60, 90, 120, 150, 180]
    );
    assert_eq!(
        compared_in(45 * PUT_OFF_BYTES_PER_ROUND),
        [45, 90, 135, 180]
    );
    assert_eq!(compared_in(64 * PUT_OFF_BYTES_PER_ROUND), [64, 128, 192]);
}

#[test]
fn a_hot_key_is_not_pulled_whole_while_deltas_keep_coming() {
    let [a, b] = &mut pair();
    let key: Key<ORSet<String>> = Key::new("presence");
    let mut whole_states_at = Vec::new();
    for round in 1..=PUT_OFF_ROUNDS + 5 {
        b.handle_timer(Timer::Gossip);
        let summary = only_sends(a.handle_timer(Timer::Gossip));
        // One add arrives; the next is still in flight when the exchange
        // compares the two replicas.
        let arrived = add(a, &key, format!("{round}-arrived"));
        deliver(a, b, arrived);
        a.handle_timer(Timer::Push);
        let in_flight = add(a, &key, format!("{round}-in-flight"));
        a.handle_timer(Timer::Push);
        let log = converse(a, b, summary);
        if !entries_sent_by(&log, "a").is_empty() || !entries_sent_by(&log, "b").is_empty() {
            whole_states_at.push(round);
        }
        assert!(sends(&deliver(a, b, in_flight)).is_empty());
    }
    // Once, when the key is compared although it keeps changing.
    assert_eq!(whole_states_at.len(), 1, "{whole_states_at:?}");
    assert!(whole_states_at[0] > PUT_OFF_ROUNDS, "{whole_states_at:?}");
    assert_eq!(a.get(&key).unwrap(), b.get(&key).unwrap());

    // The last delta of a burst is lost; once the key cools, an exchange
    // finds the difference and repairs it.
    let _lost = add(a, &key, "lost".into());
    for _ in 0..2 {
        a.handle_timer(Timer::Gossip);
        b.handle_timer(Timer::Gossip);
    }
    let summary = only_sends(a.handle_timer(Timer::Gossip));
    b.handle_timer(Timer::Gossip);
    let log = converse(a, b, summary);
    assert_eq!(entries_sent_by(&log, "a"), ["presence"]);
    assert!(b.get(&key).unwrap().unwrap().contains("lost"));
    assert_eq!(a.get(&key).unwrap(), b.get(&key).unwrap());
}

#[test]
fn a_lost_delta_is_noticed_and_the_state_is_sent_instead() {
    let [a, b] = &mut pair();
    let key: Key<ORSet<String>> = Key::new("set");
    let first = add(a, &key, "x".into());
    deliver(a, b, first);
    a.handle_timer(Timer::Push);
    let _lost = add(a, &key, "y".into());
    a.handle_timer(Timer::Push);
    let third = add(a, &key, "z".into());
    let third_again: Vec<Output> = sends(&third)
        .into_iter()
        .map(|(to, message)| Output::Send {
            to: to.into(),
            message: message.clone(),
        })
        .collect();
    let nack = deliver(a, b, third);
    assert!(
        matches!(&sends(&nack)[..], [("a", PeerMessage::DeltaNack { keys })] if keys == &["set"]),
        "{nack:?}"
    );
    assert!(
        !b.get(&key).unwrap().unwrap().contains("z"),
        "not applied out of order"
    );
    let state = deliver(b, a, nack);
    assert!(sends(&deliver(a, b, state)).is_empty());
    assert_eq!(a.get(&key).unwrap(), b.get(&key).unwrap());
    assert_eq!(b.stats().missing_deltas, 1);
    // A late or duplicated delta the state already covered changes nothing.
    assert!(sends(&deliver(a, b, third_again)).is_empty());
    assert_eq!(a.get(&key).unwrap(), b.get(&key).unwrap());
}

#[test]
fn a_burst_behind_one_gap_asks_once_a_round() {
    let [a, b] = &mut pair();
    let key: Key<ORSet<String>> = Key::new("set");
    let first = add(a, &key, "first".into());
    deliver(a, b, first);
    a.handle_timer(Timer::Push);
    let _lost = add(a, &key, "lost".into());
    let mut nacks = 0;
    for i in 0..5 {
        a.handle_timer(Timer::Push);
        let late = add(a, &key, format!("late {i}"));
        let answer = deliver(a, b, late);
        nacks += sends(&answer).len();
    }
    assert_eq!(nacks, 1);
    b.handle_timer(Timer::Gossip);
    a.handle_timer(Timer::Push);
    let later = add(a, &key, "after a round".into());
    let answer = deliver(a, b, later);
    assert_eq!(sends(&answer).len(), 1, "asked again a round later");
}

#[test]
fn a_restarted_sender_numbers_its_deltas_afresh() {
    let mut nodes = connected(&["a", "b"]);
    let key = Key::new("hits");
    for _ in 0..3 {
        let pushed = increment(&mut nodes[0], &key, WriteConsistency::Local);
        let (a, b) = nodes.split_at_mut(1);
        deliver(&a[0], &mut b[0], pushed);
        nodes[0].handle_timer(Timer::Push);
    }
    // Same replica id (as after recovery from disk), another seed.
    let mut restarted = ReplicatorCore::new(
        "a",
        ReplicaId::new("a", 1),
        Arc::new(TypeRegistry::with_builtins()),
        CoreConfig::default(),
        8,
    );
    restarted.start();
    restarted.peer_up("b");
    let other: Key<GCounter> = Key::new("other");
    let pushed = increment(&mut restarted, &other, WriteConsistency::Local);
    assert!(sends(&deliver(&restarted, &mut nodes[1], pushed)).is_empty());
    assert_eq!(nodes[1].get(&other).unwrap().unwrap().value(), 1);
}

#[test]
fn a_write_to_a_replica_behind_is_acknowledged_after_the_state_follows() {
    let [a, b] = &mut pair();
    let key: Key<ORSet<String>> = Key::new("set");
    let _lost = add(a, &key, "x".into());
    a.handle_timer(Timer::Push);
    let write = a
        .update(
            5,
            &key,
            WriteConsistency::majority(Duration::from_secs(1)),
            |set, me| set.apply(set.add(me, "y".into())),
        )
        .unwrap();
    let nack = deliver(a, b, write);
    assert!(matches!(
        &sends(&nack)[..],
        [("a", PeerMessage::DeltaNack { .. })]
    ));
    let state = deliver(b, a, nack);
    assert!(matches!(
        &sends(&state)[..],
        [("b", PeerMessage::Write { .. })]
    ));
    let ack = deliver(a, b, state);
    let done = deliver(b, a, ack);
    assert!(
        done.iter().any(|e| matches!(
            e,
            Output::WriteDone { request: 5, result: Ok(nodes) } if nodes == &["a", "b"]
        )),
        "{done:?}"
    );
    assert_eq!(a.get(&key).unwrap(), b.get(&key).unwrap());
}

#[test]
fn a_bad_delta_is_rejected_and_creates_nothing() {
    let mut b = core("b", CoreConfig::default());
    let delta = |key: &str, tag: &str, op: Vec<u8>| crate::ddata::wire::WireDelta {
        key: key.into(),
        prev: 0,
        seq: 1,
        change: crate::ddata::wire::WireChange::Ops {
            tag: tag.into(),
            ops: vec![serde_bytes::ByteBuf::from(op)],
        },
        lifetime: None,
    };
    let good_op = {
        let counter = GCounter::new();
        codec::encode(&counter.increment(&ReplicaId::new("a", 1), 2)).unwrap()
    };
    b.handle_message(
        "a",
        PeerMessage::Deltas {
            epoch: 1,
            deltas: vec![
                delta("garbage", "GCounter", vec![codec::WIRE_VERSION, 0xc1]),
                delta("alien", "NoSuchType", good_op.clone()),
                delta("good", "GCounter", good_op),
            ],
        },
    );
    assert_eq!(b.stats().rejected_entries, 2);
    assert_eq!(b.keys().collect::<Vec<_>>(), ["good"]);
    assert_eq!(
        b.get(&Key::<GCounter>::new("good"))
            .unwrap()
            .unwrap()
            .value(),
        2
    );
}

#[test]
fn a_type_registered_without_deltas_travels_whole() {
    #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Max(u64);
    impl ReplicatedData for Max {
        fn merge(&mut self, other: &Self) {
            self.0 = self.0.max(other.0);
        }
    }
    let mut types = TypeRegistry::with_builtins();
    types.register::<Max>("test.Max").unwrap();
    let types = Arc::new(types);
    let mut a = ReplicatorCore::new(
        "a",
        ReplicaId::new("a", 1),
        types.clone(),
        CoreConfig::default(),
        1,
    );
    let mut b = ReplicatorCore::new("b", ReplicaId::new("b", 1), types, CoreConfig::default(), 2);
    a.peer_up("b");
    let key: Key<Max> = Key::new("max");
    let pushed = a
        .update(1, &key, WriteConsistency::Local, |max, _| max.0 = 7)
        .unwrap();
    assert!(matches!(
        &sends(&pushed)[..],
        [("b", PeerMessage::Deltas { deltas, .. })]
            if matches!(deltas[0].change, crate::ddata::wire::WireChange::State(_))
    ));
    deliver(&a, &mut b, pushed);
    assert_eq!(b.get(&key).unwrap(), Some(&Max(7)));
}

#[test]
fn a_replica_that_caught_up_by_anti_entropy_applies_the_next_delta() {
    let [a, b] = &mut pair();
    let key: Key<ORSet<String>> = Key::new("set");
    for i in 0..5 {
        let _lost = add(a, &key, format!("{i}"));
        a.handle_timer(Timer::Push);
    }
    let summary = a.handle_timer(Timer::Gossip);
    converse(a, b, summary);
    assert_eq!(a.get(&key).unwrap(), b.get(&key).unwrap());
    let next = add(a, &key, "next".into());
    assert!(
        sends(&deliver(a, b, next)).is_empty(),
        "no gap to ask about"
    );
    assert_eq!(a.get(&key).unwrap(), b.get(&key).unwrap());
    assert_eq!(b.stats().missing_deltas, 0);
}

#[test]
fn a_panicking_update_is_an_error_and_keeps_only_what_it_applied() {
    let mut a = core("a", CoreConfig::default());
    a.peer_up("b");
    let cart: Key<ORSet<String>> = Key::new("cart");
    let refused = a.update(1, &cart, WriteConsistency::Local, |_, _| panic!("no milk"));
    assert!(
        matches!(&refused, Err(Error::Panicked { target, reason }) if target == "cart" && reason == "no milk"),
        "{refused:?}"
    );
    assert_eq!(
        a.get(&cart).unwrap(),
        None,
        "a key the update created is gone"
    );

    let outputs = a
        .update(2, &cart, WriteConsistency::Local, |set, me| {
            set.apply(set.add(me, "bread".to_string()));
            panic!("after the bread");
        })
        .expect("what it applied stands");
    assert!(outputs.iter().any(|output| matches!(
        output,
        Output::WriteDone {
            request: 2,
            result: Err(Error::Panicked { .. })
        }
    )));
    let pushed: Vec<&PeerMessage> = sends(&outputs).into_iter().map(|(_, m)| m).collect();
    assert!(
        matches!(&pushed[..], [PeerMessage::Deltas { deltas, .. }] if deltas[0].key == "cart"),
        "{pushed:?}"
    );
    assert!(a.get(&cart).unwrap().unwrap().contains("bread"));

    increment(&mut a, &Key::new("hits"), WriteConsistency::Local);
    assert_eq!(
        a.get(&Key::<GCounter>::new("hits"))
            .unwrap()
            .unwrap()
            .value(),
        1
    );
}

#[test]
fn a_removed_peer_no_longer_counts_and_losing_sight_of_it_does_not_restore_it() {
    let mut a = core("a", CoreConfig::default());
    for peer in ["b", "c"] {
        a.peer_up(peer);
    }
    a.peer_down("c");
    assert_eq!(a.members(), 3);
    a.peer_removed("c");
    assert_eq!(a.members(), 2);
    a.peer_down("c");
    assert_eq!(a.members(), 2, "a removed peer seen gone stays removed");
    let key: Key<GCounter> = Key::new("k");
    let all = WriteConsistency::All {
        timeout: Duration::from_secs(1),
    };
    let outputs = increment(&mut a, &key, all);
    let asked: Vec<&str> = sends(&outputs).into_iter().map(|(to, _)| to).collect();
    assert_eq!(asked, ["b"], "only the remaining peer is asked");
    a.peer_up("c");
    assert_eq!(a.members(), 3, "reachable again, a member again");
}

mod expiry;
mod retirement;
