use serde::{Deserialize, Serialize};

use super::{OpBased, ReplicatedData};

/// A boolean that starts off and, once switched on anywhere, stays on everywhere.
///
/// ```
/// use ractor_replicated::{Flag, OpBased, ReplicatedData};
///
/// let mut left = Flag::new();
/// let right = Flag::new();
/// left.apply(left.switch_on());
/// assert!(right.merged(&left).is_on());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Flag {
    on: bool,
}

impl Flag {
    /// A flag that is off.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that switches the flag on: a flag that is on.
    pub fn switch_on(&self) -> Flag {
        Flag { on: true }
    }

    /// Whether any replica switched the flag on.
    pub fn is_on(&self) -> bool {
        self.on
    }
}

impl ReplicatedData for Flag {
    fn merge(&mut self, other: &Self) {
        self.on |= other.on;
    }
}

impl OpBased for Flag {
    /// A flag state, merged in.
    type Op = Flag;

    fn apply(&mut self, op: Flag) {
        self.merge(&op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::ReplicaId;
    use crate::crdt::laws::{self, LawSubject};

    impl LawSubject for Flag {
        fn view(&self) -> String {
            self.is_on().to_string()
        }

        type Action = bool;
        fn act(&self, _: &ReplicaId, switch: &bool) -> Vec<Flag> {
            if *switch {
                vec![self.switch_on()]
            } else {
                Vec::new()
            }
        }
        fn keeps_observations(before: &Self, _: &Self, merged: &Self) -> bool {
            !before.is_on() || merged.is_on()
        }
    }

    laws::law_tests!(Flag);

    #[test]
    fn once_on_a_flag_stays_on() {
        let on = Flag::new().switch_on();
        assert!(on.merged(&Flag::new()).is_on());
        assert!(Flag::new().merged(&on).is_on());
        assert!(!Flag::new().merged(&Flag::new()).is_on());
    }
}
