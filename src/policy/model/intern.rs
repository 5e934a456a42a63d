//! One shared copy of each distinct label set and named-port list among the cached pods. The
//! pods of one ReplicaSet carry exactly the same labels and container ports, so a node holding
//! the 150,000 pods of a large cluster keeps a few thousand of each instead of 150,000: labels
//! were most of a cached pod's ~1.7 kB before (issue 18).
//!
//! Entries nobody else holds any more (their pods were deleted, or relabelled) are dropped every
//! PRUNE_EVERY insertions, so churn does not grow the tables without bound.

use super::{Labels, NamedPort};
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex};

/// New entries between two sweeps for unused ones.
const PRUNE_EVERY: usize = 4096;

struct Table<T: ?Sized> {
    entries: HashSet<Arc<T>>,
    added_since_prune: usize,
}

impl<T: ?Sized + Eq + Hash> Table<T> {
    fn new() -> Mutex<Table<T>> {
        Mutex::new(Table {
            entries: HashSet::new(),
            added_since_prune: 0,
        })
    }

    /// `value`'s shared copy, made by `make` when there is none.
    fn intern<V>(table: &Mutex<Table<T>>, value: V, make: impl FnOnce(V) -> Arc<T>) -> Arc<T>
    where
        V: std::borrow::Borrow<T>,
    {
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = t.entries.get(value.borrow()) {
            return found.clone();
        }
        t.added_since_prune += 1;
        if t.added_since_prune >= PRUNE_EVERY {
            t.added_since_prune = 0;
            t.entries.retain(|e| Arc::strong_count(e) > 1);
        }
        let new = make(value);
        t.entries.insert(new.clone());
        new
    }
}

static LABELS: LazyLock<Mutex<Table<Labels>>> = LazyLock::new(Table::new);
static PORTS: LazyLock<Mutex<Table<[NamedPort]>>> = LazyLock::new(Table::new);

/// The shared copy of `labels`.
pub fn labels(labels: Labels) -> Arc<Labels> {
    Table::intern(&LABELS, labels, Arc::new)
}

/// The shared copy of `ports`.
pub fn named_ports(ports: Vec<NamedPort>) -> Arc<[NamedPort]> {
    Table::intern(&PORTS, ports, |p: Vec<NamedPort>| Arc::from(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ruleset::Protocol;

    #[test]
    fn equal_values_share_one_copy_and_unused_ones_go() {
        let l = |v: &str| Labels::from([("app".to_string(), v.to_string())]);
        let a = labels(l("intern-test-a"));
        let b = labels(l("intern-test-a"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &labels(l("intern-test-b"))));
        let p = || {
            vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }]
        };
        assert!(Arc::ptr_eq(&named_ports(p()), &named_ports(p())));
        // A value no pod holds any more is swept at the next prune.
        let weak = Arc::downgrade(&labels(l("intern-test-gone")));
        for i in 0..PRUNE_EVERY {
            drop(labels(l(&format!("intern-test-filler-{i}"))));
        }
        assert!(weak.upgrade().is_none(), "an unused entry survived a prune");
        // One still held stays the shared copy.
        assert!(Arc::ptr_eq(&a, &labels(l("intern-test-a"))));
    }
}
