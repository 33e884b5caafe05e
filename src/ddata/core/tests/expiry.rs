//! Expiry as replicas see it: keys and tombstones removed after their time
//! without use, everywhere, and nothing brought back by a late copy.

use super::*;

const TTL: u64 = 10_000;

fn expiring() -> CoreConfig {
    CoreConfig {
        expiry: Expiry::never()
            .keys(
                KeySelection::prefixes(["cache/"]),
                Duration::from_millis(TTL),
            )
            .tombstones(Duration::from_millis(TTL / 2)),
        ..CoreConfig::default()
    }
}

/// Two connected cores with the expiry above, their clocks at `start`.
fn pair(start: u64) -> (ReplicatorCore, ReplicatorCore) {
    let (mut a, mut b) = (core("a", expiring()), core("b", expiring()));
    for (core, peer) in [(&mut a, "b"), (&mut b, "a")] {
        core.advance_clock(start);
        core.peer_up(peer);
    }
    (a, b)
}

/// Moves both clocks to `now` and runs a gossip round on each (which is
/// when expiry looks), letting them talk it out.
fn at(now: u64, a: &mut ReplicatorCore, b: &mut ReplicatorCore) {
    a.advance_clock(now);
    b.advance_clock(now);
    let outputs = a.handle_timer(Timer::Gossip);
    converse(a, b, outputs);
    let outputs = b.handle_timer(Timer::Gossip);
    converse(b, a, outputs);
}

fn members(core: &ReplicatorCore, key: &Key<ORSet<String>>) -> Vec<String> {
    core.get(key)
        .unwrap()
        .map(|set| set.iter().cloned().collect())
        .unwrap_or_default()
}

fn notified(outputs: &[Output], key: &str) -> bool {
    outputs.iter().any(|output| match output {
        Output::Notify { keys } => keys.iter().any(|k| k == key),
        _ => false,
    })
}

#[test]
fn a_key_unused_for_its_time_expires_on_every_replica_and_can_be_written_again() {
    let (mut a, mut b) = pair(1_000);
    let key: Key<ORSet<String>> = Key::new("cache/x");
    let kept: Key<ORSet<String>> = Key::new("kept");
    let outputs = add(&mut a, &key, "old".into());
    converse(&mut a, &mut b, outputs);
    a.handle_timer(Timer::Push);
    let outputs = add(&mut a, &kept, "k".into());
    converse(&mut a, &mut b, outputs);
    assert_eq!(members(&b, &key), ["old"]);

    at(1_000 + TTL - 1, &mut a, &mut b);
    assert_eq!(members(&b, &key), ["old"], "not yet");
    a.handle_timer(Timer::Notify);
    a.handle_timer(Timer::Notify);
    a.advance_clock(1_000 + TTL);
    let outputs = a.handle_timer(Timer::Gossip);
    assert!(notified(&outputs, "cache/x"), "listeners hear of it");
    at(1_000 + TTL, &mut a, &mut b);
    for core in [&a, &b] {
        assert!(matches!(core.lookup("cache/x"), Lookup::Absent));
        assert_eq!(core.stats().expired, 1);
        assert_eq!(members(core, &kept), ["k"], "other keys stay");
    }

    a.handle_timer(Timer::Push);
    let outputs = add(&mut a, &key, "new".into());
    converse(&mut a, &mut b, outputs);
    assert_eq!(members(&b, &key), ["new"], "written again from scratch");
}

#[test]
fn a_replica_that_still_holds_an_expired_key_takes_the_new_writes() {
    let (mut a, mut b) = pair(1_000);
    let key: Key<ORSet<String>> = Key::new("cache/x");
    for member in ["one", "two"] {
        a.handle_timer(Timer::Push);
        let outputs = add(&mut a, &key, member.into());
        converse(&mut a, &mut b, outputs);
    }
    assert_eq!(members(&b, &key), ["one", "two"]);
    // Only a's clock reached the end of the key's time: b (a clock behind)
    // still holds it, with a's changes numbered up to the second.
    a.advance_clock(1_000 + TTL);
    a.handle_timer(Timer::Gossip);
    assert!(matches!(a.lookup("cache/x"), Lookup::Absent));
    a.handle_timer(Timer::Push);
    let outputs = add(&mut a, &key, "three".into());
    converse(&mut a, &mut b, outputs);
    assert!(
        members(&b, &key).contains(&"three".to_string()),
        "the new key's first change is not taken for one b applied: {:?}",
        members(&b, &key)
    );
}

#[test]
fn a_tombstone_is_collected_after_its_time_and_a_late_copy_is_ignored() {
    let (mut a, mut b) = pair(1_000);
    let key: Key<GCounter> = Key::new("gone");
    let outputs = increment(&mut a, &key, WriteConsistency::Local);
    converse(&mut a, &mut b, outputs);
    a.handle_timer(Timer::Push);
    let deleted_at = 2_000;
    a.advance_clock(deleted_at);
    let deletion = a.delete(1, &key, WriteConsistency::Local).unwrap();
    let late_copy = deletion
        .iter()
        .filter_map(|output| match output {
            Output::Send { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect::<Vec<_>>();
    converse(&mut a, &mut b, deletion);
    assert!(matches!(b.lookup("gone"), Lookup::Deleted));
    assert!(b
        .update(1, &key, WriteConsistency::Local, |_, _| ())
        .is_err());

    at(deleted_at + TTL / 2, &mut a, &mut b);
    for core in [&a, &b] {
        assert!(matches!(core.lookup("gone"), Lookup::Absent));
        assert_eq!(core.stats().expired, 1, "collected once");
    }
    for message in late_copy {
        b.handle_message("a", message);
    }
    assert!(
        matches!(b.lookup("gone"), Lookup::Absent),
        "not brought back"
    );
    assert_eq!(b.stats().expired_arrivals, 1);
    assert!(
        b.update(1, &key, WriteConsistency::Local, |c, me| c
            .apply(c.increment(me, 5)))
            .is_ok(),
        "the key can be used again"
    );
    assert_eq!(b.get(&key).unwrap().unwrap().value(), 5);
}

#[test]
fn reads_on_one_replica_keep_a_key_alive_on_every_replica() {
    let (mut a, mut b) = pair(1_000);
    let key: Key<ORSet<String>> = Key::new("cache/read");
    let outputs = add(&mut a, &key, "v".into());
    converse(&mut a, &mut b, outputs);
    let mut now = 1_000;
    while now < 1_000 + 5 * TTL {
        now += TTL / 4;
        at(now, &mut a, &mut b);
        a.handle_timer(Timer::Push);
        let outputs = a.read(1, &key, ReadConsistency::Local).unwrap();
        converse(&mut a, &mut b, outputs);
    }
    assert_eq!(members(&b, &key), ["v"], "b heard of a's reads");
    at(now + TTL, &mut a, &mut b);
    assert!(matches!(a.lookup("cache/read"), Lookup::Absent));
    assert!(matches!(b.lookup("cache/read"), Lookup::Absent));
}

#[test]
fn a_change_that_expired_on_its_way_is_ignored() {
    let (mut a, mut b) = pair(1_000);
    let key: Key<ORSet<String>> = Key::new("cache/slow");
    let outputs = add(&mut a, &key, "v".into());
    b.advance_clock(1_000 + TTL);
    deliver(&a, &mut b, outputs);
    assert!(matches!(b.lookup("cache/slow"), Lookup::Absent));
    assert_eq!(b.stats().expired_arrivals, 1);
}

fn used_at(used: u64) -> Option<Lifetime> {
    Some(Lifetime { created: 0, used })
}

#[test]
fn a_state_that_expired_while_the_node_was_down_is_not_recovered() {
    let mut a = core("a", expiring());
    a.advance_clock(1_000 + TTL);
    let state = WireValue::Live {
        tag: "GCounter".into(),
        state: codec::encode(&GCounter::new()).unwrap(),
    };
    assert!(!a
        .recover("cache/old", state.clone(), used_at(1_000))
        .unwrap());
    assert!(a
        .recover("cache/fresh", state.clone(), used_at(1_001))
        .unwrap());
    assert!(
        a.recover("kept", state, used_at(0)).unwrap(),
        "does not expire"
    );
    let keys: Vec<&str> = a.keys().collect();
    assert_eq!(keys, ["cache/fresh", "kept"]);
}
