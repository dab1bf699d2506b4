//! Property tests ("fuzz smoke") of the protocol decoder: arbitrary bytes and arbitrary JSON
//! (including objects shaped like messages) parsed as `RunnerMessage` / `ServerMessage` never
//! panic, and every valid message survives a JSON round trip unchanged.
//!
//! Bounded: `PROPTEST_CASES` (default 256 here) cases per property, a few seconds in a debug build.

use dap_protocol::*;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

const TAGS: [&str; 9] = [
    "hello",
    "progress",
    "completed",
    "failed",
    "welcome",
    "assign",
    "cancel",
    "bogus",
    "",
];
const KEYS: [&str; 16] = [
    "protocol_version",
    "name",
    "version",
    "slots",
    "operations",
    "datasets",
    "running",
    "task_id",
    "attempt",
    "percent",
    "stage",
    "message",
    "result_data",
    "error",
    "runner_id",
    "heartbeat_interval_ms",
];

/// Any JSON value, floats included (never NaN: JSON has none).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects with a message tag and message-like keys holding arbitrary values: these reach the
/// decoder's field handling instead of failing at the first byte.
fn message_like() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(TAGS.to_vec()),
        prop::collection::vec((prop::sample::select(KEYS.to_vec()), json_value()), 0..10),
    )
        .prop_map(|(tag, fields)| {
            let mut m = Map::new();
            m.insert("type".into(), Value::from(tag));
            for (k, v) in fields {
                m.insert(k.into(), v);
            }
            Value::Object(m)
        })
}

fn text() -> impl Strategy<Value = String> {
    ".{0,16}"
}

fn task_error() -> impl Strategy<Value = TaskError> {
    (text(), text()).prop_map(|(code, message)| TaskError { code, message })
}

/// JSON without floats, so equality after a round trip is exact.
fn exact_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn runner_message() -> impl Strategy<Value = RunnerMessage> {
    let dataset = (
        text(),
        prop::collection::vec((text(), text()), 0..3),
        any::<Option<u64>>(),
    )
        .prop_map(|(name, cols, row_count)| DatasetInfo {
            name,
            format: DatasetFormat::Csv,
            columns: cols
                .into_iter()
                .map(|(name, dtype)| ColumnInfo { name, dtype })
                .collect(),
            row_count,
        });
    let running =
        (text(), any::<u32>()).prop_map(|(task_id, attempt)| RunningTask { task_id, attempt });
    prop_oneof![
        (
            any::<u32>(),
            text(),
            text(),
            any::<u32>(),
            prop::collection::vec(any::<u16>(), 0..6),
            prop::collection::vec(dataset, 0..3),
            prop::collection::vec(running, 0..3),
        )
            .prop_map(
                |(protocol_version, name, version, slots, operations, datasets, running)| {
                    RunnerMessage::Hello(Hello {
                        protocol_version,
                        name,
                        version,
                        slots,
                        operations,
                        datasets,
                        running,
                    })
                }
            ),
        (
            text(),
            any::<u32>(),
            any::<u8>(),
            prop::option::of(text()),
            prop::option::of(text())
        )
            .prop_map(|(task_id, attempt, percent, stage, message)| {
                RunnerMessage::Progress(Progress {
                    task_id,
                    attempt,
                    percent,
                    stage,
                    message,
                })
            }),
        (text(), any::<u32>(), exact_json()).prop_map(|(task_id, attempt, result_data)| {
            RunnerMessage::Completed(Completed {
                task_id,
                attempt,
                result_data,
            })
        }),
        (text(), any::<u32>(), task_error()).prop_map(|(task_id, attempt, error)| {
            RunnerMessage::Failed(Failed {
                task_id,
                attempt,
                error,
            })
        }),
        Just(RunnerMessage::Draining),
        (text(), any::<u32>(), text()).prop_map(|(task_id, attempt, reason)| {
            RunnerMessage::HandBack(HandBack {
                task_id,
                attempt,
                reason,
            })
        }),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (text(), any::<u64>()).prop_map(|(runner_id, heartbeat_interval_ms)| {
            ServerMessage::Welcome {
                runner_id,
                heartbeat_interval_ms,
            }
        }),
        (text(), any::<u32>(), any::<u16>(), exact_json()).prop_map(
            |(task_id, attempt, operation_code, params)| ServerMessage::Assign(Assignment {
                task_id,
                attempt,
                operation_code,
                params
            })
        ),
        (text(), any::<u32>())
            .prop_map(|(task_id, attempt)| ServerMessage::Cancel { task_id, attempt }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<RunnerMessage>(&bytes);
        let _ = serde_json::from_slice::<ServerMessage>(&bytes);
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = serde_json::from_str::<RunnerMessage>(s);
        }
    }

    #[test]
    fn arbitrary_json_never_panics(v in prop_oneof![json_value(), message_like()]) {
        let s = v.to_string();
        let _ = serde_json::from_str::<RunnerMessage>(&s);
        let _ = serde_json::from_str::<ServerMessage>(&s);
        let _ = serde_json::from_value::<RunnerMessage>(v.clone());
        let _ = serde_json::from_value::<ServerMessage>(v);
    }

    #[test]
    fn runner_messages_round_trip(m in runner_message()) {
        let s = m.to_json();
        prop_assert_eq!(serde_json::from_str::<RunnerMessage>(&s).unwrap(), m.clone());
        // And they are never mistaken for server messages with the same meaning.
        let tagged: Value = serde_json::from_str(&s).unwrap();
        prop_assert!(tagged["type"].is_string());
    }

    #[test]
    fn server_messages_round_trip(m in server_message()) {
        let s = m.to_json();
        prop_assert_eq!(serde_json::from_str::<ServerMessage>(&s).unwrap(), m);
    }
}

#[test]
fn a_truncated_valid_message_is_an_error_not_a_panic() {
    let m = RunnerMessage::Progress(Progress {
        task_id: "t".into(),
        attempt: 1,
        percent: 50,
        stage: Some("x".into()),
        message: None,
    })
    .to_json();
    for cut in 0..m.len() {
        assert!(serde_json::from_str::<RunnerMessage>(&m[..cut]).is_err());
    }
    assert!(serde_json::from_value::<RunnerMessage>(
        json!({"type": "progress", "task_id": "t", "attempt": 1, "percent": 256})
    )
    .is_err());
}
