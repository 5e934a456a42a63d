//! `metav1.LabelSelector` and its matching: `matchLabels` and `matchExpressions` (In, NotIn,
//! Exists, DoesNotExist), all ANDed. An empty selector (`{}`) selects everything; whether a
//! selector is absent (a peer without `podSelector`) is the caller's `Option`, not ours.
//!
//! A selector the API server would reject (an unknown operator, In/NotIn without values,
//! Exists/DoesNotExist with values) selects nothing, as `metav1.LabelSelectorAsSelector`
//! returning an error does: for a peer that fails closed, and a policy that selects nothing
//! isolates nothing, as it would upstream.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelector {
    #[serde(deserialize_with = "null_default")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_default")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(default)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(deserialize_with = "null_default")]
    pub values: Vec<String>,
}

impl Default for Requirement {
    fn default() -> Requirement {
        Requirement {
            key: String::new(),
            operator: Operator::Unknown,
            values: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// Anything else: the requirement (and so the selector) matches nothing.
    #[serde(other)]
    Unknown,
}

fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl LabelSelector {
    /// A selector with only `matchLabels`, for callers and tests.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> LabelSelector {
        LabelSelector {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether this selector selects an object with these labels.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In if !self.values.is_empty() => {
                value.is_some_and(|v| self.values.contains(v))
            }
            // NotIn also matches objects without the key, as upstream's selector does.
            Operator::NotIn if !self.values.is_empty() => {
                value.is_none_or(|v| !self.values.contains(v))
            }
            Operator::Exists if self.values.is_empty() => value.is_some(),
            Operator::DoesNotExist if self.values.is_empty() => value.is_none(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(json: &str) -> LabelSelector {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = parse("{}");
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("pod", "a")])));
        // null lists are absent lists
        let s = parse(r#"{"matchLabels": null, "matchExpressions": null}"#);
        assert_eq!(s, LabelSelector::default());
        assert!(s.matches(&labels(&[("x", "y")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = parse(r#"{"matchLabels": {"pod": "b", "pod2": "updated"}}"#);
        assert!(s.matches(&labels(&[("pod", "b"), ("pod2", "updated"), ("z", "1")])));
        assert!(!s.matches(&labels(&[("pod", "b")])));
        assert!(!s.matches(&labels(&[("pod", "b"), ("pod2", "other")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn operator_in() {
        let s = parse(
            r#"{"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}"#,
        );
        assert!(s.matches(&labels(&[("pod", "b")])));
        assert!(s.matches(&labels(&[("pod", "c")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
        assert!(!s.matches(&labels(&[])), "In needs the key");
    }

    #[test]
    fn operator_not_in_matches_missing_key() {
        let s =
            parse(r#"{"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]}"#);
        assert!(!s.matches(&labels(&[("ns", "x")])));
        assert!(s.matches(&labels(&[("ns", "y")])));
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn operator_exists_and_does_not_exist() {
        let exists = parse(r#"{"matchExpressions": [{"key": "team", "operator": "Exists"}]}"#);
        assert!(exists.matches(&labels(&[("team", "")])));
        assert!(!exists.matches(&labels(&[("other", "1")])));
        let absent =
            parse(r#"{"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}"#);
        assert!(!absent.matches(&labels(&[("team", "a")])));
        assert!(absent.matches(&labels(&[("other", "1")])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = parse(
            r#"{"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]},
                                     {"key": "canary", "operator": "DoesNotExist"}]}"#,
        );
        assert!(s.matches(&labels(&[("app", "web"), ("pod", "b")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("pod", "b"), ("canary", "1")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("pod", "b")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("pod", "c")])));
    }

    #[test]
    fn invalid_requirements_match_nothing() {
        for json in [
            r#"{"matchExpressions": [{"key": "pod", "operator": "Like", "values": ["b"]}]}"#,
            r#"{"matchExpressions": [{"key": "pod", "operator": "In", "values": []}]}"#,
            r#"{"matchExpressions": [{"key": "pod", "operator": "NotIn"}]}"#,
            r#"{"matchExpressions": [{"key": "pod", "operator": "Exists", "values": ["b"]}]}"#,
            r#"{"matchExpressions": [{"key": "pod", "operator": "DoesNotExist", "values": ["b"]}]}"#,
        ] {
            let s = parse(json);
            for l in [
                labels(&[]),
                labels(&[("pod", "b")]),
                labels(&[("pod", "c")]),
            ] {
                assert!(!s.matches(&l), "{json} matched {l:?}");
            }
        }
    }
}
