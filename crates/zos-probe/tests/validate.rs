//! What a probe request may ask: the ranges, the address families, the names, and
//! nothing outside the built-in set (serde refuses an unknown probe or field). Each
//! refusal is its own assertion, and a refused spec is never run.

use std::net::IpAddr;
use std::time::Duration;

use zos_probe::{run, ProbeError, ProbeSpec};

fn refused(spec: ProbeSpec, field: &str, value: u64) {
    match spec.validate() {
        Err(ProbeError::OutOfRange {
            field: f, value: v, ..
        }) => {
            assert_eq!((f, v), (field, value), "{spec:?}")
        }
        other => panic!("{spec:?}: expected OutOfRange({field}), got {other:?}"),
    }
    // run() refuses it the same way, before sending anything: no line, no success.
    let r = run(&spec, None, Duration::from_secs(1));
    assert!(!r.ok);
    assert!(r.lines.is_empty(), "{r:?}");
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains(&format!("{field} = {value} is outside")),
        "{r:?}"
    );
}

const V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

#[test]
fn ping_count_must_be_1_to_10() {
    refused(
        ProbeSpec::Ping {
            target: V4,
            count: 0,
        },
        "count",
        0,
    );
    refused(
        ProbeSpec::Ping {
            target: V4,
            count: 11,
        },
        "count",
        11,
    );
    assert!(ProbeSpec::Ping {
        target: V4,
        count: 1
    }
    .validate()
    .is_ok());
    assert!(ProbeSpec::Ping {
        target: V4,
        count: 10
    }
    .validate()
    .is_ok());
}

#[test]
fn trace_max_hops_must_be_1_to_30() {
    refused(
        ProbeSpec::Trace {
            target: V4,
            max_hops: 0,
        },
        "max_hops",
        0,
    );
    refused(
        ProbeSpec::Trace {
            target: V4,
            max_hops: 31,
        },
        "max_hops",
        31,
    );
    assert!(ProbeSpec::Trace {
        target: V4,
        max_hops: 30
    }
    .validate()
    .is_ok());
}

#[test]
fn capture_packets_and_seconds_are_bounded() {
    refused(
        ProbeSpec::Capture {
            packets: 0,
            seconds: 1,
        },
        "packets",
        0,
    );
    refused(
        ProbeSpec::Capture {
            packets: 201,
            seconds: 1,
        },
        "packets",
        201,
    );
    refused(
        ProbeSpec::Capture {
            packets: 1,
            seconds: 0,
        },
        "seconds",
        0,
    );
    refused(
        ProbeSpec::Capture {
            packets: 1,
            seconds: 11,
        },
        "seconds",
        11,
    );
    assert!(ProbeSpec::Capture {
        packets: 200,
        seconds: 10
    }
    .validate()
    .is_ok());
}

#[test]
fn bad_dns_names_are_refused_and_ipv6_targets_taken() {
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert!(ProbeSpec::Ping {
        target: v6,
        count: 1
    }
    .validate()
    .is_ok());
    assert!(ProbeSpec::Trace {
        target: v6,
        max_hops: 3
    }
    .validate()
    .is_ok());
    for bad in [
        "",
        ".",
        "a..b",
        "a b.test",
        "x;rm -rf",
        &"a".repeat(64),
        &"a.".repeat(130),
    ] {
        let spec = ProbeSpec::Dns {
            name: bad.to_string(),
            server: None,
        };
        assert!(
            matches!(spec.validate(), Err(ProbeError::BadName(_))),
            "{bad:?}"
        );
    }
    assert!(ProbeSpec::Dns {
        name: "www.zt.test.".into(),
        server: None
    }
    .validate()
    .is_ok());
}

#[test]
fn serde_refuses_unknown_probes_and_fields() {
    let ok: ProbeSpec =
        serde_json::from_str(r#"{"probe":"ping","target":"192.0.2.1","count":2}"#).unwrap();
    assert_eq!(
        ok,
        ProbeSpec::Ping {
            target: V4,
            count: 2
        }
    );
    let e = serde_json::from_str::<ProbeSpec>(r#"{"probe":"shell","cmd":"id"}"#).unwrap_err();
    assert!(e.to_string().contains("unknown variant `shell`"), "{e}");
    let e = serde_json::from_str::<ProbeSpec>(
        r#"{"probe":"ping","target":"192.0.2.1","count":2,"cmd":"id"}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `cmd`"), "{e}");
    let e = serde_json::from_str::<ProbeSpec>(
        r#"{"probe":"capture","packets":300,"seconds":1,"payload":true}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `payload`"), "{e}");
    // A count that does not fit the type is refused by serde already.
    let e =
        serde_json::from_str::<ProbeSpec>(r#"{"probe":"ping","target":"192.0.2.1","count":1000}"#)
            .unwrap_err();
    assert!(e.to_string().contains("1000"), "{e}");
    // Round trip of every probe.
    for s in [
        ProbeSpec::TcpConnect {
            addr: "192.0.2.1:80".parse().unwrap(),
        },
        ProbeSpec::Dns {
            name: "a.test".into(),
            server: Some("192.0.2.1:53".parse().unwrap()),
        },
        ProbeSpec::Trace {
            target: V4,
            max_hops: 4,
        },
        ProbeSpec::Capture {
            packets: 3,
            seconds: 2,
        },
    ] {
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ProbeSpec>(&j).unwrap(), s, "{j}");
    }
}
