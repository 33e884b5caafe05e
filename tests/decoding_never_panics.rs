//! Bytes from a peer or from disk are untrusted: decoding any of them must give
//! a value or an error, never a panic. Checked with random bytes and with valid
//! encodings that were truncated or had bytes flipped.

use quickcheck::{quickcheck, TestResult};
use ractor_replicated::{
    codec, Flag, GCounter, GSet, LWWMap, LWWRegister, MVRegister, ORMap, ORMultiMap, ORSet,
    OpBased, PNCounter, PNCounterMap, ReplicaId, ReplicatedData, VersionVector,
};

/// A small but non-trivial state of every type, built by three replicas.
fn sample_states() -> Vec<(&'static str, Vec<u8>)> {
    let ids: Vec<ReplicaId> = (0..3)
        .map(|i| ReplicaId::new(format!("node-{i}"), 7))
        .collect();
    let mut set = ORSet::new();
    let mut map: ORMap<u8, PNCounter> = ORMap::new();
    let mut multi = ORMultiMap::new();
    let mut lww_map = LWWMap::new();
    let mut counters = PNCounterMap::new();
    let mut gcounter = GCounter::new();
    let mut pn = PNCounter::new();
    let mut gset = GSet::new();
    let mut mv = MVRegister::new();
    let mut lww = LWWRegister::new();
    let mut flag = Flag::new();
    for (i, id) in ids.iter().enumerate() {
        let n = i as u8;
        set.apply(set.add(id, format!("item-{i}")));
        map.apply(map.update(id, n, |c, me| c.apply(c.increment(me, 3))));
        multi.apply(multi.add_binding(id, n % 2, n));
        lww_map.apply(lww_map.insert(id, n, format!("v{i}")));
        counters.apply(counters.decrement(id, n, 2));
        gcounter.apply(gcounter.increment(id, 5));
        pn.apply(pn.change(id, -4));
        gset.apply(gset.insert(n));
        mv.apply(mv.write(id, n));
        lww.apply(lww.set(id, n));
    }
    set.apply(set.remove("item-1"));
    flag.apply(flag.switch_on());
    let mut vv = VersionVector::new();
    ids.iter().for_each(|id| {
        vv.increment(id);
    });
    let encode = |value: &dyn erased::Encode| value.bytes();
    vec![
        ("ORSet", encode(&set)),
        ("ORMap", encode(&map)),
        ("ORMultiMap", encode(&multi)),
        ("LWWMap", encode(&lww_map)),
        ("PNCounterMap", encode(&counters)),
        ("GCounter", encode(&gcounter)),
        ("PNCounter", encode(&pn)),
        ("GSet", encode(&gset)),
        ("MVRegister", encode(&mv)),
        ("LWWRegister", encode(&lww)),
        ("Flag", encode(&flag)),
        ("VersionVector", encode(&vv)),
    ]
}

mod erased {
    pub trait Encode {
        fn bytes(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn bytes(&self) -> Vec<u8> {
            ractor_replicated::codec::encode(self).expect("test states encode")
        }
    }
}

/// Decodes `bytes` as the type named `kind`; Ok(true) if it decoded.
fn decode_as(kind: &str, bytes: &[u8]) -> bool {
    fn ok<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> bool {
        codec::decode::<T>(bytes).is_ok()
    }
    match kind {
        "ORSet" => ok::<ORSet<String>>(bytes),
        "ORMap" => ok::<ORMap<u8, PNCounter>>(bytes),
        "ORMultiMap" => ok::<ORMultiMap<u8, u8>>(bytes),
        "LWWMap" => ok::<LWWMap<u8, String>>(bytes),
        "PNCounterMap" => ok::<PNCounterMap<u8>>(bytes),
        "GCounter" => ok::<GCounter>(bytes),
        "PNCounter" => ok::<PNCounter>(bytes),
        "GSet" => ok::<GSet<u8>>(bytes),
        "MVRegister" => ok::<MVRegister<u8>>(bytes),
        "LWWRegister" => ok::<LWWRegister<u8>>(bytes),
        "Flag" => ok::<Flag>(bytes),
        "VersionVector" => ok::<VersionVector>(bytes),
        other => panic!("unknown kind {other}"),
    }
}

#[test]
fn sample_states_decode_as_themselves() {
    for (kind, bytes) in sample_states() {
        assert!(decode_as(kind, &bytes), "{kind} must decode");
    }
}

#[test]
fn random_bytes_never_panic_any_decoder() {
    fn property(body: Vec<u8>) -> bool {
        let mut bytes = vec![codec::WIRE_VERSION];
        bytes.extend(body);
        for (kind, _) in sample_states() {
            decode_as(kind, &bytes);
        }
        true
    }
    quickcheck(property as fn(Vec<u8>) -> bool);
}

#[test]
fn flipped_and_truncated_encodings_never_panic() {
    fn property(flips: Vec<(usize, u8)>, cut: usize) -> TestResult {
        for (kind, mut bytes) in sample_states() {
            for &(at, mask) in &flips {
                let at = at % bytes.len();
                bytes[at] ^= mask | 1;
            }
            decode_as(kind, &bytes);
            decode_as(kind, &bytes[..cut % bytes.len()]);
        }
        TestResult::passed()
    }
    quickcheck(property as fn(Vec<(usize, u8)>, usize) -> TestResult);
}

#[test]
fn a_state_that_decodes_after_corruption_still_merges_without_panic() {
    // Corruption can produce another valid state; it must still be a lawful one.
    let (kind, original) = sample_states().swap_remove(0);
    assert_eq!(kind, "ORSet");
    let pristine: ORSet<String> = codec::decode(&original).unwrap();
    for at in 1..original.len() {
        for mask in [0x01u8, 0x10, 0x80] {
            let mut bytes = original.clone();
            bytes[at] ^= mask;
            if let Ok(state) = codec::decode::<ORSet<String>>(&bytes) {
                let a = state.merged(&pristine);
                let b = pristine.merged(&state);
                assert_eq!(
                    a, b,
                    "merge of a corrupted-but-valid state stays commutative"
                );
            }
        }
    }
}
