//! A sequence with logarithmic insertion anywhere, for the canonical order of
//! a [`ReplicatedLog`](super::ReplicatedLog).
//!
//! Under concurrent writers, late events land thousands of places back in the
//! canonical order; a vector moved everything after each of them, and finding
//! the place scanned as far. This is a treap keyed implicitly by position
//! (randomised priorities keep it balanced in expectation), held in an arena
//! of nodes that keep their index for as long as their item is in the tree,
//! so the log can find an event's position from its node. Each node knows the
//! size of its subtree and its greatest item, which makes finding the first
//! item after a position that is greater than a probe a descent, not a scan.

use std::cmp::Ordering;

use crate::rng::SplitMix64;

/// A node's index in the arena.
pub(super) type NodeId = u32;

const NIL: NodeId = NodeId::MAX;

struct Node<T> {
    /// `None` only while the node is on the free list.
    item: Option<T>,
    left: NodeId,
    right: NodeId,
    parent: NodeId,
    priority: u64,
    size: u32,
    /// The node of the greatest item in this subtree.
    greatest: NodeId,
}

/// A sequence of items with an order among them (passed to each operation
/// that needs it, and always the same one).
pub(super) struct RankTree<T> {
    nodes: Vec<Node<T>>,
    free: Vec<NodeId>,
    root: NodeId,
    priorities: SplitMix64,
}

impl<T> RankTree<T> {
    pub(super) fn new() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            priorities: SplitMix64::new(0x5EED_0F7E_E5ED),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.size(self.root)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.root == NIL
    }

    pub(super) fn clear(&mut self) {
        self.nodes.clear();
        self.free.clear();
        self.root = NIL;
    }

    /// The item of a node in the tree.
    pub(super) fn item(&self, node: NodeId) -> &T {
        self.nodes[node as usize]
            .item
            .as_ref()
            .expect("a node in the tree holds an item")
    }

    /// The position of a node's item.
    pub(super) fn rank(&self, node: NodeId) -> usize {
        let mut rank = self.size(self.left(node));
        let mut child = node;
        let mut parent = self.parent(node);
        while parent != NIL {
            if self.right(parent) == child {
                rank += self.size(self.left(parent)) + 1;
            }
            child = parent;
            parent = self.parent(parent);
        }
        rank
    }

    /// Inserts `item` at `position` (at most the length); the items from
    /// there on move one place up. Returns the item's node.
    pub(super) fn insert(
        &mut self,
        position: usize,
        item: T,
        order: &impl Fn(&T, &T) -> Ordering,
    ) -> NodeId {
        let node = self.allocate(item);
        if self.root == NIL {
            self.root = node;
            return node;
        }
        let mut at = self.root;
        let mut position = position.min(self.len());
        loop {
            let left = self.left(at);
            let left_size = self.size(left);
            if position <= left_size {
                if left == NIL {
                    self.set_left(at, node);
                    break;
                }
                at = left;
            } else {
                position -= left_size + 1;
                let right = self.right(at);
                if right == NIL {
                    self.set_right(at, node);
                    break;
                }
                at = right;
            }
        }
        // Each ancestor's subtree grew by the node; the node is the greatest
        // of a subtree only if it is of every subtree below it.
        let mut ancestor = at;
        let mut greatest_so_far = true;
        while ancestor != NIL {
            let entry = &self.nodes[ancestor as usize];
            greatest_so_far = greatest_so_far
                && order(self.item(node), self.item(entry.greatest)) == Ordering::Greater;
            let entry = &mut self.nodes[ancestor as usize];
            entry.size = entry.size.saturating_add(1);
            if greatest_so_far {
                entry.greatest = node;
            }
            ancestor = entry.parent;
        }
        while self.parent(node) != NIL
            && self.nodes[node as usize].priority > self.nodes[self.parent(node) as usize].priority
        {
            self.rotate_up(node, order);
        }
        node
    }

    /// The position of the first item at or after `from` that `probe` orders
    /// before, if any.
    pub(super) fn first_after(
        &self,
        from: usize,
        probe: &T,
        order: &impl Fn(&T, &T) -> Ordering,
    ) -> Option<usize> {
        let mut skip = from;
        let mut offset = 0;
        let mut at = self.root;
        // Down the path to position `from`, keeping the subtrees to its
        // right that may hold the answer, nearest first.
        let mut candidates = Vec::new();
        while at != NIL {
            let left_size = self.size(self.left(at));
            if skip < left_size {
                candidates.push((offset + left_size, at));
                at = self.left(at);
            } else if skip == left_size {
                candidates.push((offset + left_size, at));
                at = NIL;
            } else {
                offset += left_size + 1;
                skip -= left_size + 1;
                at = self.right(at);
            }
        }
        // Each candidate is a node at the given position and its right
        // subtree; the nearest goes first.
        for &(position, node) in candidates.iter().rev() {
            if order(probe, self.item(node)) == Ordering::Less {
                return Some(position);
            }
            if let Some(found) = self.first_in(self.right(node), probe, order) {
                return Some(position + 1 + found);
            }
        }
        None
    }

    /// The position within `subtree` of its first item that `probe` orders
    /// before.
    fn first_in(
        &self,
        subtree: NodeId,
        probe: &T,
        order: &impl Fn(&T, &T) -> Ordering,
    ) -> Option<usize> {
        let mut at = subtree;
        let mut offset = 0;
        if at == NIL || order(probe, self.item(self.greatest(at))) != Ordering::Less {
            return None;
        }
        // Invariant: the subtree at `at` holds an answer.
        loop {
            let left = self.left(at);
            if left != NIL && order(probe, self.item(self.greatest(left))) == Ordering::Less {
                at = left;
                continue;
            }
            let left_size = self.size(left);
            if order(probe, self.item(at)) == Ordering::Less {
                return Some(offset + left_size);
            }
            offset += left_size + 1;
            at = self.right(at);
        }
    }

    /// Removes the first `count` items and hands them to `removed`, in order.
    pub(super) fn remove_first(
        &mut self,
        count: usize,
        order: &impl Fn(&T, &T) -> Ordering,
        mut removed: impl FnMut(T),
    ) {
        let (prefix, rest) = self.split(self.root, count, order);
        self.root = rest;
        if rest != NIL {
            self.nodes[rest as usize].parent = NIL;
        }
        // In order, without recursion.
        let mut stack = Vec::new();
        self.push_spine(&mut stack, prefix, Side::Left);
        while let Some(node) = stack.pop() {
            self.push_spine(&mut stack, self.right(node), Side::Left);
            if let Some(item) = self.nodes[node as usize].item.take() {
                removed(item);
            }
            self.free.push(node);
        }
    }

    /// The items in order.
    pub(super) fn iter(&self) -> Iter<'_, T> {
        self.iter_from(0)
    }

    /// The items from `position` on, in order.
    pub(super) fn iter_from(&self, position: usize) -> Iter<'_, T> {
        let remaining = self.len().saturating_sub(position);
        let mut front = Vec::new();
        let mut skip = position;
        let mut at = self.root;
        while at != NIL && remaining > 0 {
            let left_size = self.size(self.left(at));
            if skip < left_size {
                front.push(at);
                at = self.left(at);
            } else if skip == left_size {
                front.push(at);
                break;
            } else {
                skip -= left_size + 1;
                at = self.right(at);
            }
        }
        let mut back = Vec::new();
        if remaining > 0 {
            self.push_spine(&mut back, self.root, Side::Right);
        }
        Iter {
            tree: self,
            front,
            back,
            remaining,
        }
    }

    /// Splits `tree` into its first `count` items and the rest.
    fn split(
        &mut self,
        tree: NodeId,
        count: usize,
        order: &impl Fn(&T, &T) -> Ordering,
    ) -> (NodeId, NodeId) {
        if tree == NIL {
            return (NIL, NIL);
        }
        let left = self.left(tree);
        let left_size = self.size(left);
        if count <= left_size {
            let (prefix, rest) = self.split(left, count, order);
            self.set_left(tree, rest);
            self.update(tree, order);
            if prefix != NIL {
                self.nodes[prefix as usize].parent = NIL;
            }
            self.nodes[tree as usize].parent = NIL;
            (prefix, tree)
        } else {
            let (prefix, rest) = self.split(self.right(tree), count - left_size - 1, order);
            self.set_right(tree, prefix);
            self.update(tree, order);
            if rest != NIL {
                self.nodes[rest as usize].parent = NIL;
            }
            self.nodes[tree as usize].parent = NIL;
            (tree, rest)
        }
    }

    fn allocate(&mut self, item: T) -> NodeId {
        let priority = self.priorities.next_u64();
        let node = Node {
            item: Some(item),
            left: NIL,
            right: NIL,
            parent: NIL,
            priority,
            size: 1,
            greatest: NIL,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                let id =
                    NodeId::try_from(self.nodes.len()).expect("fewer than 2^32 events in memory");
                self.nodes.push(node);
                id
            }
        };
        self.nodes[id as usize].greatest = id;
        id
    }

    /// Makes `node` its parent's parent.
    fn rotate_up(&mut self, node: NodeId, order: &impl Fn(&T, &T) -> Ordering) {
        let parent = self.parent(node);
        let grandparent = self.parent(parent);
        if self.left(parent) == node {
            let moved = self.right(node);
            self.set_left(parent, moved);
            self.set_right(node, parent);
        } else {
            let moved = self.left(node);
            self.set_right(parent, moved);
            self.set_left(node, parent);
        }
        self.nodes[node as usize].parent = grandparent;
        if grandparent == NIL {
            self.root = node;
        } else if self.left(grandparent) == parent {
            self.nodes[grandparent as usize].left = node;
        } else {
            self.nodes[grandparent as usize].right = node;
        }
        self.update(parent, order);
        self.update(node, order);
    }

    /// Recomputes a node's size and greatest item from its children.
    fn update(&mut self, node: NodeId, order: &impl Fn(&T, &T) -> Ordering) {
        let (left, right) = (self.left(node), self.right(node));
        let mut greatest = node;
        for child in [left, right] {
            if child != NIL {
                let candidate = self.greatest(child);
                if order(self.item(candidate), self.item(greatest)) == Ordering::Greater {
                    greatest = candidate;
                }
            }
        }
        let size = 1 + self.size(left) + self.size(right);
        let entry = &mut self.nodes[node as usize];
        entry.greatest = greatest;
        entry.size = u32::try_from(size).unwrap_or(u32::MAX);
    }

    /// Pushes `from` and its descendants along one side onto `stack`: the
    /// next items of an in-order walk in that direction.
    fn push_spine(&self, stack: &mut Vec<NodeId>, from: NodeId, side: Side) {
        let mut at = from;
        while at != NIL {
            stack.push(at);
            at = match side {
                Side::Left => self.left(at),
                Side::Right => self.right(at),
            };
        }
    }

    fn set_left(&mut self, node: NodeId, child: NodeId) {
        self.nodes[node as usize].left = child;
        if child != NIL {
            self.nodes[child as usize].parent = node;
        }
    }

    fn set_right(&mut self, node: NodeId, child: NodeId) {
        self.nodes[node as usize].right = child;
        if child != NIL {
            self.nodes[child as usize].parent = node;
        }
    }

    fn size(&self, node: NodeId) -> usize {
        if node == NIL {
            0
        } else {
            self.nodes[node as usize].size as usize
        }
    }

    fn left(&self, node: NodeId) -> NodeId {
        self.nodes[node as usize].left
    }

    fn right(&self, node: NodeId) -> NodeId {
        self.nodes[node as usize].right
    }

    fn parent(&self, node: NodeId) -> NodeId {
        self.nodes[node as usize].parent
    }

    fn greatest(&self, node: NodeId) -> NodeId {
        self.nodes[node as usize].greatest
    }
}

/// A direction down the tree.
#[derive(Clone, Copy)]
enum Side {
    Left,
    Right,
}

/// The items of a [`RankTree`] in order, from a position on.
pub(super) struct Iter<'a, T> {
    tree: &'a RankTree<T>,
    /// The next item is the top's; below it, the ancestors still to visit.
    front: Vec<NodeId>,
    /// The same, from the back.
    back: Vec<NodeId>,
    remaining: usize,
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        if self.remaining == 0 {
            return None;
        }
        let node = self.front.pop()?;
        self.tree
            .push_spine(&mut self.front, self.tree.right(node), Side::Left);
        self.remaining -= 1;
        Some(self.tree.item(node))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<T> DoubleEndedIterator for Iter<'_, T> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let node = self.back.pop()?;
        self.tree
            .push_spine(&mut self.back, self.tree.left(node), Side::Right);
        self.remaining -= 1;
        Some(self.tree.item(node))
    }
}

impl<T> ExactSizeIterator for Iter<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn natural(a: &u32, b: &u32) -> Ordering {
        a.cmp(b)
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(usize, u32),
        RemoveFirst(usize),
        FirstAfter(usize, u32),
        Rank(usize),
        IterFrom(usize),
    }

    impl quickcheck::Arbitrary for Op {
        fn arbitrary(g: &mut quickcheck::Gen) -> Self {
            let position = usize::arbitrary(g) % 80;
            let value = u32::arbitrary(g) % 50;
            match u8::arbitrary(g) % 10 {
                0..=5 => Op::Insert(position, value),
                6 => Op::RemoveFirst(position % 8),
                7 => Op::FirstAfter(position, value),
                8 => Op::Rank(position),
                _ => Op::IterFrom(position),
            }
        }
    }

    quickcheck! {
        /// Against a vector: the same items in the same places, the same
        /// answers.
        fn behaves_like_a_vector(ops: Vec<Op>) -> bool {
            let mut tree = RankTree::new();
            let mut model: Vec<u32> = Vec::new();
            let mut nodes: Vec<NodeId> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(position, value) => {
                        let position = position.min(model.len());
                        model.insert(position, value);
                        nodes.insert(position, tree.insert(position, value, &natural));
                    }
                    Op::RemoveFirst(count) => {
                        let count = count.min(model.len());
                        let mut removed = Vec::new();
                        tree.remove_first(count, &natural, |item| removed.push(item));
                        if removed != model.drain(..count).collect::<Vec<_>>() {
                            return false;
                        }
                        nodes.drain(..count);
                    }
                    Op::FirstAfter(from, probe) => {
                        let expected = (from..model.len()).find(|&i| probe < model[i]);
                        if tree.first_after(from, &probe, &natural) != expected {
                            return false;
                        }
                    }
                    Op::Rank(index) => {
                        if let Some(&node) = nodes.get(index) {
                            if tree.rank(node) != index || *tree.item(node) != model[index] {
                                return false;
                            }
                        }
                    }
                    Op::IterFrom(from) => {
                        let expected: Vec<u32> = model.iter().skip(from).copied().collect();
                        let forward: Vec<u32> = tree.iter_from(from).copied().collect();
                        let mut backward: Vec<u32> = tree.iter_from(from).rev().copied().collect();
                        backward.reverse();
                        if forward != expected || backward != expected
                            || tree.iter_from(from).len() != expected.len() {
                            return false;
                        }
                    }
                }
                if tree.len() != model.len() || !tree.iter().copied().eq(model.iter().copied()) {
                    return false;
                }
            }
            true
        }
    }

    #[test]
    fn both_ends_meet_without_crossing() {
        let mut tree = RankTree::new();
        for value in 0..100 {
            tree.insert(tree.len(), value, &natural);
        }
        for from in [10u32, 11] {
            let mut iter = tree.iter_from(from as usize);
            let mut seen = Vec::new();
            for step in 0.. {
                let item = if step % 2 == 0 {
                    iter.next()
                } else {
                    iter.next_back()
                };
                let Some(&item) = item else { break };
                seen.push(item);
            }
            seen.sort_unstable();
            assert_eq!(seen, (from..100).collect::<Vec<u32>>());
        }
    }
}
