//! A tour of the CRDT library: three in-memory replicas of each type make
//! concurrent, conflicting changes, exchange their states as encoded bytes in
//! gossip rounds, and end with identical values.
//!
//! Run with `cargo run --release --example crdt_tour`.

use std::fmt::Debug;

use ractor_replicated::{
    codec, Flag, GCounter, GSet, LWWMap, LWWRegister, MVRegister, ORMap, ORMultiMap, ORSet,
    OpBased, PNCounter, PNCounterMap, ReplicaId, ReplicatedData,
};

/// Three replicas of one CRDT.
struct Trio<T> {
    ids: [ReplicaId; 3],
    states: [T; 3],
}

impl<T: ReplicatedData + OpBased + Default> Trio<T> {
    fn new() -> Self {
        Self {
            ids: ["node-a", "node-b", "node-c"].map(ReplicaId::fresh),
            states: Default::default(),
        }
    }

    /// Lets replica `at` run a mutator and apply its operation locally.
    fn on(&mut self, at: usize, change: impl FnOnce(&T, &ReplicaId) -> T::Op) -> &mut Self {
        let op = change(&self.states[at], &self.ids[at]);
        self.states[at].apply(op);
        self
    }

    /// Gossip: every replica sends its encoded state to the next, twice round.
    fn converge(&mut self) -> Result<&[T; 3], ractor_replicated::Error> {
        for round in 0..6 {
            let (from, to) = (round % 3, (round + 1) % 3);
            let bytes = codec::encode(&self.states[from])?;
            let incoming: T = codec::decode(&bytes)?;
            self.states[to].merge(&incoming);
        }
        Ok(&self.states)
    }
}

fn show<V: Debug + PartialEq>(name: &str, story: &str, values: [V; 3]) {
    assert!(
        values[0] == values[1] && values[1] == values[2],
        "{name} did not converge"
    );
    println!("{name:<13} {story:<58} → {:?} on all three", values[0]);
}

fn main() -> Result<(), ractor_replicated::Error> {
    println!("Three replicas per type; concurrent changes; states exchanged as bytes.\n");

    let mut t = Trio::<GCounter>::new();
    t.on(0, |c, me| c.increment(me, 3))
        .on(1, |c, me| c.increment(me, 4))
        .on(2, |c, me| c.increment(me, 5));
    show(
        "GCounter",
        "a +3, b +4, c +5",
        t.converge()?.clone().map(|c| c.value()),
    );

    let mut t = Trio::<PNCounter>::new();
    t.on(0, |c, me| c.increment(me, 10))
        .on(1, |c, me| c.decrement(me, 4))
        .on(2, |c, me| c.change(me, -1));
    show(
        "PNCounter",
        "a +10, b -4, c -1",
        t.converge()?.clone().map(|c| c.value()),
    );

    let mut t = Trio::<GSet<char>>::new();
    t.on(0, |s, _| s.insert('x'))
        .on(1, |s, _| s.insert('y'))
        .on(2, |s, _| s.insert('x'));
    show(
        "GSet",
        "a adds x, b adds y, c adds x",
        t.converge()?
            .clone()
            .map(|s| s.iter().copied().collect::<Vec<_>>()),
    );

    let mut t = Trio::<ORSet<String>>::new();
    t.on(0, |s, me| s.add(me, "milk".into()));
    t.converge()?;
    t.on(0, |s, _| s.remove("milk"))
        .on(1, |s, me| s.add(me, "milk".into()))
        .on(2, |s, me| s.add(me, "eggs".into()));
    show(
        "ORSet",
        "all see milk; a removes it while b re-adds it; c adds eggs",
        t.converge()?
            .clone()
            .map(|s| s.iter().cloned().collect::<Vec<_>>()),
    );

    let mut t = Trio::<LWWRegister<String>>::new();
    t.on(0, |r, me| {
        r.set_with_clock(me, "draft".into(), &|_: Option<i64>| 1)
    })
    .on(1, |r, me| {
        r.set_with_clock(me, "final".into(), &|_: Option<i64>| 3)
    })
    .on(2, |r, me| {
        r.set_with_clock(me, "review".into(), &|_: Option<i64>| 2)
    });
    show(
        "LWWRegister",
        "writes at t=1, t=3, t=2",
        t.converge()?.clone().map(|r| r.value().cloned()),
    );

    let mut t = Trio::<Flag>::new();
    t.on(2, |f, _| f.switch_on());
    show(
        "Flag",
        "only c switches it on",
        t.converge()?.map(|f| f.is_on()),
    );

    let mut t = Trio::<MVRegister<String>>::new();
    t.on(0, |r, me| r.write(me, "blue".into()))
        .on(1, |r, me| r.write(me, "green".into()));
    show(
        "MVRegister",
        "a writes blue, b writes green, concurrently",
        t.converge()?
            .clone()
            .map(|r| r.values().cloned().collect::<Vec<_>>()),
    );

    let mut t = Trio::<ORMap<String, GCounter>>::new();
    t.on(0, |m, me| {
        m.update(me, "views".into(), |c, writer| {
            c.apply(c.increment(writer, 2))
        })
    })
    .on(1, |m, me| {
        m.update(me, "views".into(), |c, writer| {
            c.apply(c.increment(writer, 5))
        })
    })
    .on(2, |m, me| {
        m.update(me, "likes".into(), |c, writer| {
            c.apply(c.increment(writer, 1))
        })
    });
    show(
        "ORMap",
        "counters per key; a and b bump views concurrently",
        t.converge()?.clone().map(|m| {
            m.iter()
                .map(|(k, c)| (k.clone(), c.value()))
                .collect::<Vec<_>>()
        }),
    );

    let mut t = Trio::<LWWMap<String, u32>>::new();
    t.on(0, |m, me| {
        m.insert_with_clock(me, "port".into(), 8080, &|_: Option<i64>| 1)
    })
    .on(1, |m, me| {
        m.insert_with_clock(me, "port".into(), 9090, &|_: Option<i64>| 2)
    })
    .on(2, |m, me| {
        m.insert_with_clock(me, "workers".into(), 4, &|_: Option<i64>| 1)
    });
    show(
        "LWWMap",
        "a and b set port at t=1 and t=2; c sets workers",
        t.converge()?
            .clone()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v)).collect::<Vec<_>>()),
    );

    let mut t = Trio::<PNCounterMap<String>>::new();
    t.on(0, |m, me| m.increment(me, "apples".into(), 3))
        .on(1, |m, me| m.decrement(me, "apples".into(), 1))
        .on(2, |m, me| m.increment(me, "pears".into(), 2));
    show(
        "PNCounterMap",
        "stock per fruit from three stores",
        t.converge()?
            .clone()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v)).collect::<Vec<_>>()),
    );

    let mut t = Trio::<ORMultiMap<String, String>>::new();
    t.on(0, |m, me| m.add_binding(me, "alice".into(), "admin".into()));
    t.converge()?;
    t.on(0, |m, me| m.remove_binding(me, "alice".into(), "admin"))
        .on(1, |m, me| m.add_binding(me, "alice".into(), "dev".into()))
        .on(2, |m, me| m.add_binding(me, "bob".into(), "dev".into()));
    show(
        "ORMultiMap",
        "a revokes alice's admin; b grants her dev; c adds bob",
        t.converge()?.clone().map(|m| {
            m.iter()
                .map(|(k, s)| (k.clone(), s.iter().cloned().collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        }),
    );

    println!("\nEvery type converged to the same value on all replicas.");
    Ok(())
}
