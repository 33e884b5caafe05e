use serde::{Deserialize, Serialize};

use super::kernel::{self, apply_delta, merge_dotted, validated};
use super::{OpBased, Payload, ReplicatedData};
use crate::causal::{CausalContext, Dot, ReplicaId};

/// A multi-value register: a write replaces every value its writer had seen, and
/// concurrent writes are all kept, for the application to resolve.
///
/// Each value is tagged with the dot of its write. Space: one entry per
/// concurrent write that no later write has seen, plus the causal context.
///
/// ```
/// use ractor_replicated::{MVRegister, OpBased, ReplicaId, ReplicatedData};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut left = MVRegister::new();
/// let mut right = MVRegister::new();
/// left.apply(left.write(&a, 't'));
/// right.apply(right.write(&b, 'c'));
/// left.merge(&right);
/// assert_eq!(left.values().collect::<Vec<_>>(), [&'t', &'c']);
/// left.apply(left.write(&a, 'w'));
/// assert_eq!(left.values().collect::<Vec<_>>(), [&'w']);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Payload"), try_from = "Wire<T>")]
pub struct MVRegister<T> {
    context: CausalContext,
    values: Vec<(Dot, T)>,
}

/// The decoded form, checked before it becomes a register.
#[derive(Deserialize)]
struct Wire<T> {
    context: CausalContext,
    values: Vec<(Dot, T)>,
}

impl<T: Payload> TryFrom<Wire<T>> for MVRegister<T> {
    type Error = String;

    fn try_from(wire: Wire<T>) -> Result<Self, String> {
        Ok(Self {
            values: validated(wire.values, &wire.context)?,
            context: wire.context,
        })
    }
}

/// A write to an [`MVRegister`]: the new value under a new dot, and the dots of
/// the values it replaces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MVRegisterOp<T> {
    /// The dot of this write.
    pub dot: Dot,
    /// The written value.
    pub value: T,
    /// The dots of the values the writer saw, which this write replaces.
    pub replaces: Vec<Dot>,
}

impl<T> Default for MVRegister<T> {
    fn default() -> Self {
        Self {
            context: CausalContext::new(),
            values: Vec::new(),
        }
    }
}

impl<T: Payload> MVRegister<T> {
    /// An empty register.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that writes `value`, replacing every value seen here.
    pub fn write(&self, replica: &ReplicaId, value: T) -> MVRegisterOp<T> {
        MVRegisterOp {
            dot: self.context.next_dot(replica),
            value,
            replaces: self.values.iter().map(|(dot, _)| dot.clone()).collect(),
        }
    }

    /// The current values: one, or several after concurrent writes, in dot order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.values.iter().map(|(_, value)| value)
    }

    /// The current values with the dots of their writes.
    pub fn entries(&self) -> &[(Dot, T)] {
        &self.values
    }

    /// How many concurrent values the register holds.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether nothing was ever written (or every write was replaced by none).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Everything this register has observed.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }
}

impl<T: Payload> ReplicatedData for MVRegister<T> {
    fn merge(&mut self, other: &Self) {
        merge_dotted(
            &mut self.values,
            &self.context,
            &other.values,
            &other.context,
        );
        self.context.merge(&other.context);
    }

    fn retire(&mut self, node: &str, below: u64) {
        self.context.retire(node, below);
    }

    fn mentions(&self, node: &str, below: u64) -> bool {
        kernel::mentions(&self.context, self.values.iter(), node, below)
    }
}

impl<T: Payload> OpBased for MVRegister<T> {
    type Op = MVRegisterOp<T>;

    fn apply(&mut self, op: MVRegisterOp<T>) {
        apply_delta(
            &mut self.values,
            &mut self.context,
            Some((op.dot, op.value)),
            &op.replaces,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::laws::{self, LawSubject};
    use quickcheck::quickcheck;

    impl LawSubject for MVRegister<u8> {
        fn view(&self) -> String {
            format!("{:?}", self.values().collect::<Vec<_>>())
        }

        type Action = u8;
        fn act(&self, replica: &ReplicaId, value: &u8) -> Vec<MVRegisterOp<u8>> {
            vec![self.write(replica, *value)]
        }
        fn keeps_observations(before: &Self, other: &Self, merged: &Self) -> bool {
            // A value survives unless the other side saw its write and replaced it.
            before
                .entries()
                .iter()
                .all(|entry| merged.entries().contains(entry) || other.context().contains(&entry.0))
        }
    }

    laws::law_tests!(MVRegister<u8>);

    #[test]
    fn keeps_exactly_the_concurrent_values() {
        // n replicas start from a common value, each writes once without seeing
        // the others: the merge holds exactly those n writes.
        fn property(writers: u8) -> bool {
            let n = 1 + usize::from(writers % 5);
            let mut base = MVRegister::new();
            base.apply(base.write(&laws::replica(9), 0u8));
            let replicas: Vec<MVRegister<u8>> = (0..n)
                .map(|i| {
                    let mut r = base.clone();
                    r.apply(r.write(&laws::replica(i), i as u8 + 1));
                    r
                })
                .collect();
            let merged = replicas.iter().fold(base.clone(), |acc, r| acc.merged(r));
            let mut values: Vec<u8> = merged.values().copied().collect();
            values.sort_unstable();
            values == (1..=n as u8).collect::<Vec<_>>()
        }
        quickcheck(property as fn(u8) -> bool);
    }

    #[test]
    fn decoding_rejects_values_outside_the_context_or_sharing_a_dot() {
        let a = laws::replica(0);
        let mut register = MVRegister::new();
        register.apply(register.write(&a, 1u8));
        let unseen = Dot::new(a.clone(), 9);
        let outside = (register.context.clone(), vec![(unseen, 2u8)]);
        let shared = (
            register.context.clone(),
            vec![(Dot::new(a.clone(), 1), 1u8), (Dot::new(a, 1), 2)],
        );
        for (bad, why) in [(outside, "outside"), (shared, "two entries")] {
            let bytes = crate::codec::encode(&bad).unwrap();
            let err = crate::codec::decode::<MVRegister<u8>>(&bytes).unwrap_err();
            let crate::Error::Decode {
                failure: crate::error::DecodeFailure::Malformed(invariant),
                ..
            } = &err
            else {
                panic!("not a broken invariant: {err:?}");
            };
            assert!(invariant.to_string().contains(why), "{invariant}");
        }
    }

    #[test]
    fn a_write_that_saw_the_conflict_resolves_it() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let mut x = MVRegister::new();
        let mut y = MVRegister::new();
        x.apply(x.write(&a, 1));
        y.apply(y.write(&b, 2));
        x.merge(&y);
        assert_eq!(x.len(), 2);
        x.apply(x.write(&b, 3));
        y.merge(&x);
        assert_eq!(y.values().collect::<Vec<_>>(), [&3]);
    }
}
