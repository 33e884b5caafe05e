//! The dot-kernel merge rule shared by ORSet, MVRegister and ORMap.
//!
//! Each of these keeps entries tagged with dots plus a [`CausalContext`]. Merging
//! keeps an entry if both sides hold its dot, or if one side holds it and the other
//! has never observed that dot. An entry whose dot the other side observed but
//! dropped was removed there, so it goes. Operations are small delta states merged
//! by the same rule, which makes them idempotent and order-independent.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::causal::{CausalContext, Dot};

/// Something tagged with a dot: a bare `Dot` (ORSet) or `(Dot, value)`.
pub(crate) trait Dotted: Clone {
    /// Whether two copies under one dot may differ: a map's value settled
    /// on one replica (see `ReplicatedData::retire_settled`) and not yet
    /// on another. Only retirement makes them differ.
    const COPIES_MAY_DIFFER: bool = false;

    fn dot(&self) -> &Dot;

    /// Joins another copy under the same dot into this one.
    fn join_copy(&mut self, other: &Self) {
        let _ = other;
    }
}

impl Dotted for Dot {
    fn dot(&self) -> &Dot {
        self
    }
}

impl<V: Clone> Dotted for (Dot, V) {
    fn dot(&self) -> &Dot {
        &self.0
    }
}

/// Whether `context` or one of `entries` mentions an incarnation of `node`
/// below `below` (see `ReplicatedData::mentions`).
pub(crate) fn mentions<'a, E: Dotted + 'a>(
    context: &CausalContext,
    mut entries: impl Iterator<Item = &'a E>,
    node: &str,
    below: u64,
) -> bool {
    context.mentions(node, below)
        || entries.any(|entry| entry.dot().replica.is_earlier_incarnation_of(node, below))
}

/// Merges `theirs` into `mine`; both are sorted by dot, and stay so.
pub(crate) fn merge_dotted<E: Dotted>(
    mine: &mut Vec<E>,
    my_context: &CausalContext,
    theirs: &[E],
    their_context: &CausalContext,
) {
    // Entries under the same dot are identical everywhere (but for
    // retirement), so equal dots mean equal entries: the common converged
    // case needs no work.
    let join_copies = E::COPIES_MAY_DIFFER
        && !(my_context.retired().is_empty() && their_context.retired().is_empty());
    if mine.len() == theirs.len() && mine.iter().zip(theirs).all(|(a, b)| a.dot() == b.dot()) {
        if join_copies {
            mine.iter_mut()
                .zip(theirs)
                .for_each(|(a, b)| a.join_copy(b));
        }
        return;
    }
    let mut merged = Vec::with_capacity(mine.len().max(theirs.len()));
    let mut left = std::mem::take(mine).into_iter().peekable();
    let mut right = theirs.iter().peekable();
    loop {
        let step = match (left.peek(), right.peek()) {
            (Some(a), Some(b)) => a.dot().cmp(b.dot()),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => break,
        };
        match step {
            Ordering::Less => {
                merged.extend(left.next().filter(|e| !their_context.contains(e.dot())))
            }
            Ordering::Greater => merged.extend(
                right
                    .next()
                    .filter(|e| !my_context.contains(e.dot()))
                    .cloned(),
            ),
            Ordering::Equal => {
                let (Some(mut entry), Some(copy)) = (left.next(), right.next()) else {
                    break;
                };
                if join_copies {
                    entry.join_copy(copy);
                }
                merged.push(entry);
            }
        }
    }
    *mine = merged;
}

/// Merges keyed dotted entries (`key -> entries sorted by dot`); keys left with no
/// entries disappear. Runs as one ordered pass over both maps.
pub(crate) fn merge_keyed<K: Ord + Clone, E: Dotted>(
    mine: &mut BTreeMap<K, Vec<E>>,
    my_context: &CausalContext,
    theirs: &BTreeMap<K, Vec<E>>,
    their_context: &CausalContext,
) {
    let mut merged: Vec<(K, Vec<E>)> = Vec::with_capacity(mine.len().max(theirs.len()));
    let mut left = std::mem::take(mine).into_iter().peekable();
    let mut right = theirs.iter().peekable();
    loop {
        let step = match (left.peek(), right.peek()) {
            (Some((a, _)), Some((b, _))) => a.cmp(b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => break,
        };
        let entry = match step {
            Ordering::Less => left.next().map(|(key, mut entries)| {
                entries.retain(|e| !their_context.contains(e.dot()));
                (key, entries)
            }),
            Ordering::Greater => right.next().map(|(key, entries)| {
                let kept = entries
                    .iter()
                    .filter(|e| !my_context.contains(e.dot()))
                    .cloned()
                    .collect();
                (key.clone(), kept)
            }),
            Ordering::Equal => match (left.next(), right.next()) {
                (Some((key, mut entries)), Some((_, other))) => {
                    merge_dotted(&mut entries, my_context, other, their_context);
                    Some((key, entries))
                }
                _ => None,
            },
        };
        merged.extend(entry.filter(|(_, entries)| !entries.is_empty()));
    }
    // Input is sorted and unique, so collecting builds the tree in one pass.
    *mine = merged.into_iter().collect();
}

/// Applies a delta to one key's entries: `observed` dots are removed, `new` is
/// added unless already observed, and the context learns all of them.
pub(crate) fn apply_delta<E: Dotted>(
    entries: &mut Vec<E>,
    context: &mut CausalContext,
    new: Option<E>,
    observed: &[Dot],
) {
    if !observed.is_empty() {
        entries.retain(|e| !observed.contains(e.dot()));
    }
    if let Some(entry) = new {
        if !context.contains(entry.dot()) {
            let at = entries.partition_point(|e| e.dot() < entry.dot());
            context.insert(entry.dot().clone());
            entries.insert(at, entry);
        }
    }
    for dot in observed {
        context.insert(dot.clone());
    }
}

/// Applies a delta to the entries under `key` of a keyed store.
pub(crate) fn apply_keyed_delta<K: Ord, E: Dotted>(
    store: &mut BTreeMap<K, Vec<E>>,
    context: &mut CausalContext,
    key: K,
    new: Option<E>,
    observed: &[Dot],
) {
    match store.get_mut(&key) {
        Some(entries) => {
            apply_delta(entries, context, new, observed);
            if entries.is_empty() {
                store.remove(&key);
            }
        }
        None => {
            let mut entries = Vec::new();
            apply_delta(&mut entries, context, new, observed);
            if !entries.is_empty() {
                store.insert(key, entries);
            }
        }
    }
}

/// Checks dotted entries decoded from untrusted bytes and puts them in dot order.
///
/// Rejects counter-0 dots, dots the context has not observed, and a dot that
/// appears twice. The merge relies on all three: one dot names one entry.
pub(crate) fn validated<E: Dotted>(
    mut entries: Vec<E>,
    context: &CausalContext,
) -> Result<Vec<E>, String> {
    entries.sort_by(|a, b| a.dot().cmp(b.dot()));
    if let Some(bad) = entries
        .iter()
        .find(|e| e.dot().counter == 0 || !context.contains(e.dot()))
    {
        return Err(format!("dot {:?} is outside the causal context", bad.dot()));
    }
    ensure_unique_dots(entries.iter().map(Dotted::dot))?;
    Ok(entries)
}

/// Rejects a dot that tags more than one entry of a decoded state.
pub(crate) fn ensure_unique_dots<'a>(dots: impl Iterator<Item = &'a Dot>) -> Result<(), String> {
    let mut all: Vec<&Dot> = dots.collect();
    all.sort_unstable();
    match all.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(format!("dot {:?} tags two entries", pair[0])),
        None => Ok(()),
    }
}
