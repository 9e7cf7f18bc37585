//! Outputs that stay small whatever the schema holds.
//!
//! Every output lands in the execution's state, which Step Functions caps at 256 KB per
//! state — a limit `States.ALL` cannot catch: past it the run dies where it stands, inside
//! the pause window if that is where it was. So a list that grows with the schema (tables,
//! sequences, roles, objects) goes into an output as a [`Listed`]: its count and its first
//! [`LISTED`] items. The function logs every item.

use serde::{Deserialize, Serialize};

/// How many items of a list an output carries.
pub const LISTED: usize = 20;

/// A list in an output: how many there are, and the first [`LISTED`] of them (in the
/// order the function produced them; its log has every one).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Listed<T> {
    pub total: usize,
    pub first: Vec<T>,
}

impl<T> Listed<T> {
    /// Keeps the first [`LISTED`] of `items`.
    pub fn of(mut items: Vec<T>) -> Self {
        let total = items.len();
        items.truncate(LISTED);
        Self {
            total,
            first: items,
        }
    }

    /// Counts one more item, and carries it while fewer than [`LISTED`] are.
    pub fn push(&mut self, item: T) {
        self.total += 1;
        if self.first.len() < LISTED {
            self.first.push(item);
        }
    }

    /// Whether there are none at all.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Self {
            total: 0,
            first: Vec::new(),
        }
    }
}

impl<T> From<Vec<T>> for Listed<T> {
    fn from(items: Vec<T>) -> Self {
        Self::of(items)
    }
}

impl<T> FromIterator<T> for Listed<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self::of(iter.into_iter().collect())
    }
}

impl<T> std::ops::Deref for Listed<T> {
    type Target = [T];

    /// The items carried (all of them while there are at most [`LISTED`]).
    fn deref(&self) -> &[T] {
        &self.first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_keeps_its_count_and_its_head() {
        let listed: Listed<u32> = (0..1000).collect();
        assert_eq!(listed.total, 1000);
        assert_eq!(listed.first.len(), LISTED);
        assert_eq!(listed[0], 0);
        let json = serde_json::to_string(&listed).expect("json");
        assert!(json.len() < 200, "{json}");
        let short = Listed::of(vec!["a", "b"]);
        assert_eq!((short.total, short.len()), (2, 2));
        let mut pushed = Listed::default();
        for i in 0..100 {
            pushed.push(i);
        }
        assert_eq!(pushed, (0..100).collect::<Listed<i32>>());
        assert!(Listed::<u8>::default().is_empty());
    }
}
