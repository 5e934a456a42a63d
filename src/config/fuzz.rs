//! Property tests over hostile input: the parser never panics, and every rejection carries a
//! code a runtime understands.

use super::*;
use proptest::prelude::*;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[ -~]{0,24}".prop_map(Value::String),
        prop_oneof![
            Just("10.244.1.0/24"),
            Just("10.0.0.0/8"),
            Just("fd00:10:244:1::/64"),
            Just("fd00::/126"),
            Just("fd00::5"),
            Just("10.244.1.7"),
            Just("1.1.0"),
            Just("0.3.1"),
            Just("/run/x"),
            Just("host-local")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("cniVersion".to_string()),
                    Just("ipam".to_string()),
                    Just("subnet".to_string()),
                    Just("rangeStart".to_string()),
                    Just("rangeEnd".to_string()),
                    Just("ranges".to_string()),
                    Just("type".to_string()),
                    Just("dataDir".to_string()),
                    Just("mtu".to_string()),
                    Just("dns".to_string()),
                    Just("nonMasqueradeCIDRs".to_string()),
                    "[a-zA-Z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn config_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(v) = parse_json(&bytes) {
            if let Err(e) = parse(v) {
                prop_assert!(matches!(e.code, Code::IncompatibleVersion | Code::UnsupportedField | Code::InvalidConfig));
            }
        }
    }

    #[test]
    fn config_values_never_panic(mut v in json_value(), version in prop_oneof![Just("1.0.0"), Just("0.3.1"), Just("2.0")]) {
        if let Value::Object(o) = &mut v {
            o.insert("cniVersion".into(), Value::String(version.into()));
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        match parse_json(&bytes).and_then(parse) {
            Ok(c) => {
                if let Ipam::Builtin(pools) = &c.ipam {
                    prop_assert!(!pools.is_empty() && pools.len() <= 2);
                    for p in pools {
                        let n = |a| addr_to_u128(a);
                        prop_assert!(n(p.range_start) > n(p.subnet.network()) && n(p.range_end) < n(p.subnet.broadcast()));
                        prop_assert!(n(p.range_start) <= n(p.range_end));
                        prop_assert!(p.subnet.contains(p.range_start) && p.subnet.contains(p.range_end));
                        prop_assert!(p.data_dir.is_absolute());
                    }
                }
                prop_assert!(c.host_veth_prefix.len() <= 4);
            }
            Err(e) => prop_assert!(matches!(e.code, Code::Decode | Code::IncompatibleVersion | Code::UnsupportedField | Code::InvalidConfig)),
        }
    }

    #[test]
    fn cni_args_never_panic(raw in "[ -~]{0,200}") {
        let a = crate::cni::env::parse_cni_args(&raw);
        prop_assert!(a.all.keys().all(|k| !k.is_empty() && !k.contains(';')));
    }
}
