use quickcheck::{quickcheck, Arbitrary, Gen};

use super::*;
use crate::codec;
use crate::crdt::laws::{self, History, LawSubject};

#[derive(Clone, Debug)]
pub(crate) enum SetAction {
    Add(u8),
    Remove(u8),
    Clear,
}

impl Arbitrary for SetAction {
    fn arbitrary(g: &mut Gen) -> Self {
        let member = u8::arbitrary(g) % 8;
        match u8::arbitrary(g) % 10 {
            0..=5 => SetAction::Add(member),
            6..=8 => SetAction::Remove(member),
            _ => SetAction::Clear,
        }
    }
}

impl LawSubject for ORSet<u8> {
    fn view(&self) -> String {
        format!("{:?}", self.iter().collect::<Vec<_>>())
    }

    type Action = SetAction;
    fn act(&self, replica: &ReplicaId, action: &SetAction) -> Vec<ORSetOp<u8>> {
        vec![match action {
            SetAction::Add(m) => self.add(replica, *m),
            SetAction::Remove(m) => self.remove(m),
            SetAction::Clear => self.clear(),
        }]
    }
    fn keeps_observations(before: &Self, other: &Self, merged: &Self) -> bool {
        // A dot survives unless the other side observed it and dropped it.
        before.iter().all(|member| {
            before.dots_of(member).iter().all(|dot| {
                let removed_there =
                    other.context().contains(dot) && !other.dots_of(member).contains(dot);
                removed_there || merged.dots_of(member).contains(dot)
            })
        })
    }
}

laws::law_tests!(ORSet<u8>);

fn history_state(history: &History<SetAction>) -> ORSet<u8> {
    laws::run::<ORSet<u8>>(history)
        .states
        .iter()
        .fold(ORSet::new(), |acc, s| acc.merged(s))
}

#[test]
fn a_concurrent_add_beats_a_remove() {
    fn property(base: History<SetAction>, member: u8) -> bool {
        let member = member % 8;
        let base = history_state(&base);
        let mut remover = base.clone();
        remover.apply(remover.remove(&member));
        let mut adder = base.clone();
        adder.apply(adder.add(&laws::replica(7), member));
        remover.merged(&adder).contains(&member) && adder.merged(&remover).contains(&member)
    }
    quickcheck(property as fn(History<SetAction>, u8) -> bool);
}

#[test]
fn an_observed_remove_stays_removed_against_any_stale_state() {
    fn property(history: History<SetAction>, member: u8) -> bool {
        let run = laws::run::<ORSet<u8>>(&history);
        let everything = run.states.iter().fold(ORSet::new(), |acc, s| acc.merged(s));
        let member = member % 8;
        let mut removed = everything.clone();
        removed.apply(removed.remove(&member));
        // Every intermediate state a replica could still hold: each replica's
        // state after each prefix of the operations it applied.
        let mut stale = ORSet::new();
        let stale_states: Vec<ORSet<u8>> = run
            .ops
            .iter()
            .map(|op| {
                stale.apply(op.clone());
                stale.clone()
            })
            .chain(run.states.iter().cloned())
            .collect();
        stale_states
            .iter()
            .all(|s| !removed.merged(s).contains(&member) && !s.merged(&removed).contains(&member))
    }
    quickcheck(property as fn(History<SetAction>, u8) -> bool);
}

/// Three replicas add and then remove `n` elements, gossiping as they go.
fn churned_set(n: u32) -> ORSet<u32> {
    let ids: Vec<ReplicaId> = (0..3).map(laws::replica).collect();
    let mut replicas = vec![ORSet::new(); 3];
    for i in 0..n {
        let at = (i % 3) as usize;
        let replica = &mut replicas[at];
        replica.apply(replica.add(&ids[at], i));
        if i % 16 == 0 {
            let snapshot = replicas[at].clone();
            replicas[(at + 1) % 3].merge(&snapshot);
        }
    }
    let mut all = replicas.iter().fold(ORSet::new(), |acc, s| acc.merged(s));
    for i in 0..n {
        all.apply(all.remove(&i));
    }
    all
}

#[test]
fn removing_everything_leaves_a_state_of_size_o_replicas_not_o_elements() {
    let sizes: Vec<usize> = [10, 1_000, 20_000]
        .iter()
        .map(|&n| codec::encode(&churned_set(n)).unwrap().len())
        .collect();
    // Only the width of the three counters may grow (varints): a few bytes.
    assert!(sizes.iter().all(|&len| len < 64), "encoded sizes {sizes:?}");
    assert!(sizes[2] - sizes[0] <= 12, "encoded sizes {sizes:?}");
    let full = codec::encode(&{
        let mut s = ORSet::new();
        (0..20_000u32).for_each(|i| s.apply(s.add(&laws::replica(0), i)));
        s
    })
    .unwrap()
    .len();
    assert!(
        full > 20_000 * 4,
        "a full set costs per element ({full} bytes)"
    );
}

#[test]
fn a_remove_delivered_before_its_add_is_deferred_until_the_add_arrives() {
    let (a, b) = (laws::replica(0), laws::replica(1));
    let mut origin = ORSet::new();
    let add = origin.add(&a, 'x');
    origin.apply(add.clone());
    let remove = origin.remove(&'x');
    origin.apply(remove.clone());

    let mut late = ORSet::new();
    late.apply(remove);
    assert!(!late.contains(&'x'));
    late.apply(add);
    assert!(
        !late.contains(&'x'),
        "the early remove swallowed the late add"
    );
    assert_eq!(late, origin);

    // A new add by someone who never saw that history still wins.
    late.apply(ORSet::new().add(&b, 'x'));
    assert!(late.contains(&'x'));
}

#[test]
fn adds_removes_and_clear_read_as_expected() {
    let a = laws::replica(0);
    let mut cart = ORSet::new();
    for item in ["apple", "bread", "cheese"] {
        cart.apply(cart.add(&a, item.to_string()));
    }
    cart.apply(cart.remove("bread"));
    assert_eq!(
        cart.iter().cloned().collect::<Vec<_>>(),
        ["apple", "cheese"]
    );
    cart.apply(cart.add(&a, "bread".to_string()));
    assert!(cart.contains("bread"), "re-adding after a remove works");
    assert_eq!(cart.dots_of("bread").len(), 1);
    cart.apply(cart.clear());
    assert!(cart.is_empty());
    assert_eq!(cart.context().vector().get(&a), 4);
}

#[test]
fn clear_spares_elements_added_concurrently() {
    let (a, b) = (laws::replica(0), laws::replica(1));
    let mut x = ORSet::new();
    x.apply(x.add(&a, 1));
    let mut y = x.clone();
    x.apply(x.clear());
    y.apply(y.add(&b, 2));
    y.apply(y.add(&b, 1));
    let merged = x.merged(&y);
    assert_eq!(merged.iter().copied().collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn decoding_rejects_dots_outside_the_table_or_the_context() {
    let bad_index: Wire<u8> = Wire {
        replicas: vec![laws::replica(0)],
        vector: vec![(0, 1)],
        cloud: vec![],
        entries: vec![(1, vec![(5, 1)])],
        retired: Retired::new(),
    };
    assert!(ORSet::try_from(bad_index)
        .unwrap_err()
        .contains("outside a table"));
    let unseen: Wire<u8> = Wire {
        replicas: vec![laws::replica(0)],
        vector: vec![(0, 1)],
        cloud: vec![],
        entries: vec![(1, vec![(0, 2)])],
        retired: Retired::new(),
    };
    assert!(ORSet::try_from(unseen)
        .unwrap_err()
        .contains("causal context"));
    let shared: Wire<u8> = Wire {
        replicas: vec![laws::replica(0)],
        vector: vec![(0, 1)],
        cloud: vec![],
        entries: vec![(1, vec![(0, 1)]), (2, vec![(0, 1)])],
        retired: Retired::new(),
    };
    assert!(ORSet::try_from(shared).unwrap_err().contains("two entries"));
}

#[test]
fn decoding_rejects_what_the_encoder_never_writes() {
    let (a, b) = (laws::replica(0), laws::replica(1));
    let unsorted_table: Wire<u8> = Wire {
        replicas: vec![b.clone(), a.clone()],
        vector: vec![(0, 1), (1, 1)],
        cloud: vec![],
        entries: vec![(1, vec![(0, 1)]), (2, vec![(1, 1)])],
        retired: Retired::new(),
    };
    assert!(ORSet::try_from(unsorted_table)
        .unwrap_err()
        .contains("replica table"));
    let repeated_replica: Wire<u8> = Wire {
        replicas: vec![a.clone(), a.clone()],
        vector: vec![(0, 1), (1, 1)],
        cloud: vec![],
        entries: vec![(1, vec![(0, 1)]), (2, vec![(1, 1)])],
        retired: Retired::new(),
    };
    assert!(ORSet::try_from(repeated_replica).is_err());
    for members in [[2, 1], [1, 1]] {
        let unsorted: Wire<u8> = Wire {
            replicas: vec![a.clone(), b.clone()],
            vector: vec![(0, 1), (1, 1)],
            cloud: vec![],
            entries: vec![(members[0], vec![(0, 1)]), (members[1], vec![(1, 1)])],
            retired: Retired::new(),
        };
        assert!(ORSet::try_from(unsorted)
            .unwrap_err()
            .contains("out of order"));
    }
}

#[test]
fn a_decoded_set_equals_the_encoded_one() {
    let (a, b) = (laws::replica(0), laws::replica(1));
    let mut set = ORSet::new();
    for i in 0..100u32 {
        let writer = if i % 3 == 0 { &a } else { &b };
        set.apply(set.add(writer, i));
    }
    let mut concurrent = set.clone();
    concurrent.apply(concurrent.add(&a, 7));
    set.apply(set.add(&b, 7));
    set.apply(set.remove(&50));
    set.merge(&concurrent);
    let decoded: ORSet<u32> = crate::codec::decode(&crate::codec::encode(&set).unwrap()).unwrap();
    assert_eq!(decoded, set);
    assert_eq!(decoded.dots_of(&7).len(), 2);
}
