//! The wire contract stays compatible with agents already in clusters.
//!
//! `fixtures/ferry-v1-0.1.0.proto` is the contract as Ferry 0.1.0 shipped
//! it. These tests compile it at test time (protox, no system protoc) and
//! check what an old agent and a new coordinator exchange: every field an
//! old peer knows keeps its number, type and cardinality, and messages
//! written with one schema read back whole with the other.

use prost::Message;
use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    Value,
};
use std::collections::HashMap;

fn old_pool() -> DescriptorPool {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let fds =
        protox::compile(["ferry-v1-0.1.0.proto"], [dir]).expect("the 0.1.0 contract compiles");
    DescriptorPool::from_file_descriptor_set(fds).expect("a valid descriptor set")
}

fn new_pool() -> DescriptorPool {
    DescriptorPool::decode(ferry_proto::FILE_DESCRIPTOR_SET).expect("the current contract")
}

/// Messages an agent sends or receives (AgentLink and Enrollment).
const AGENT_MESSAGES: &[&str] = &[
    "AgentMessage",
    "Hello",
    "StatusReport",
    "ObjectProblem",
    "Heartbeat",
    "CoordinatorMessage",
    "Assignment",
    "AssignmentOptions",
    "Rejection",
    "EnrollRequest",
    "EnrollResponse",
    "RenewRequest",
];

/// Fields 0.1.0 defined that the current contract retired on purpose: they
/// are reserved, so their numbers can never come back with another meaning.
const RETIRED: &[&str] = &[
    "ferry.v1.CoordinatorMessage.ping",
    "ferry.v1.WavePolicy.offline",
    "ferry.v1.Rollout.phase",
    "ferry.v1.RolloutCluster.phase",
];

/// Messages 0.1.0 defined that nothing refers to any more.
const RETIRED_MESSAGES: &[&str] = &["ferry.v1.Ping"];

fn same_kind(a: &Kind, b: &Kind) -> bool {
    match (a, b) {
        (Kind::Message(x), Kind::Message(y)) => x.full_name() == y.full_name(),
        (Kind::Enum(x), Kind::Enum(y)) => x.full_name() == y.full_name(),
        _ => a == b,
    }
}

#[test]
fn every_field_an_old_peer_knows_keeps_its_number_and_type() {
    let (old, new) = (old_pool(), new_pool());
    let mut problems = vec![];
    for om in old.all_messages() {
        let Some(nm) = new.get_message_by_name(om.full_name()) else {
            if RETIRED_MESSAGES.contains(&om.full_name()) {
                continue;
            }
            problems.push(format!("message {} is gone", om.full_name()));
            continue;
        };
        let reserved: Vec<std::ops::Range<u32>> = nm.reserved_ranges().collect();
        for of in om.fields() {
            let retired = RETIRED.contains(&of.full_name());
            match nm.get_field(of.number()) {
                Some(nf) => {
                    if retired {
                        problems.push(format!(
                            "{} was retired but its number is in use",
                            of.full_name()
                        ));
                    }
                    if !same_kind(&of.kind(), &nf.kind()) || of.cardinality() != nf.cardinality() {
                        problems.push(format!(
                            "{} (field {}) changed type or cardinality",
                            of.full_name(),
                            of.number()
                        ));
                    }
                }
                None if retired && reserved.iter().any(|r| r.contains(&of.number())) => {}
                None => problems.push(format!(
                    "{} (field {}) is gone without being retired and reserved",
                    of.full_name(),
                    of.number()
                )),
            }
        }
    }
    // An agent's own messages lose nothing at all.
    for name in AGENT_MESSAGES {
        let full = format!("ferry.v1.{name}");
        let om = old.get_message_by_name(&full).expect("0.1.0 has it");
        let nm = new.get_message_by_name(&full).expect("still there");
        for of in om.fields() {
            if nm.get_field(of.number()).is_none()
                && of.full_name() != "ferry.v1.CoordinatorMessage.ping"
            {
                problems.push(format!(
                    "{} is gone: an old agent still uses it",
                    of.full_name()
                ));
            }
        }
    }
    for oe in old.all_enums() {
        let ne = new.get_enum_by_name(oe.full_name()).expect("enum kept");
        for v in oe.values() {
            if ne.get_value(v.number()).map(|n| n.name().to_string()) != Some(v.name().to_string())
            {
                problems.push(format!("enum value {} changed", v.full_name()));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A value for every field (one member of each oneof), none of them the
/// default, so a field that is dropped in transit shows.
fn filled(desc: &MessageDescriptor, depth: usize) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    let mut oneofs_done: Vec<String> = vec![];
    for f in desc.fields() {
        if let Some(o) = f.containing_oneof() {
            if oneofs_done.contains(&o.name().to_string()) {
                continue;
            }
            oneofs_done.push(o.name().to_string());
        }
        if let Some(v) = value_for(&f, depth) {
            m.set_field(&f, v);
        }
    }
    m
}

fn scalar(f: &FieldDescriptor, kind: &Kind, depth: usize) -> Option<Value> {
    let n = f.number();
    Some(match kind {
        Kind::String => Value::String(format!("{}-{n}", f.name())),
        Kind::Bytes => Value::Bytes(vec![n as u8; 3].into()),
        Kind::Bool => Value::Bool(true),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(n as i32 + 7),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(n as i64 + 1_700_000_000_000),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(n + 7),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(n as u64 + 70),
        Kind::Float => Value::F32(1.5),
        Kind::Double => Value::F64(2.5),
        Kind::Enum(e) => Value::EnumNumber(e.values().map(|v| v.number()).max().unwrap_or(0)),
        Kind::Message(m) if depth < 4 => Value::Message(filled(m, depth + 1)),
        Kind::Message(_) => return None,
    })
}

fn value_for(f: &FieldDescriptor, depth: usize) -> Option<Value> {
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else {
            unreachable!("maps are messages")
        };
        let v = scalar(
            &entry.map_entry_value_field(),
            &entry.map_entry_value_field().kind(),
            depth,
        )?;
        let mut map = HashMap::new();
        map.insert(MapKey::String(format!("k-{}", f.number())), v);
        return Some(Value::Map(map));
    }
    let v = scalar(f, &f.kind(), depth)?;
    Some(if f.cardinality() == Cardinality::Repeated {
        Value::List(vec![v.clone(), v])
    } else {
        v
    })
}

fn with_choice(desc: &MessageDescriptor, field: &str) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    let f = desc.get_field_by_name(field).expect("field exists");
    m.set_field(&f, value_for(&f, 0).expect("a value"));
    m
}

#[test]
fn what_an_old_agent_sends_reads_whole_and_what_a_new_coordinator_sends_reads_whole() {
    let old = old_pool();
    let agent_msg = old.get_message_by_name("ferry.v1.AgentMessage").unwrap();
    for choice in ["hello", "status", "heartbeat"] {
        let sent = with_choice(&agent_msg, choice);
        let bytes = sent.encode_to_vec();
        // The new coordinator reads it ...
        let got = ferry_proto::v1::AgentMessage::decode(bytes.as_slice())
            .unwrap_or_else(|e| panic!("{choice}: {e}"));
        assert!(got.msg.is_some(), "{choice} was not understood");
        // ... and has lost nothing the old agent said.
        let again =
            DynamicMessage::decode(agent_msg.clone(), got.encode_to_vec().as_slice()).unwrap();
        assert_eq!(again, sent, "{choice} changed in transit");
        if let Some(ferry_proto::v1::agent_message::Msg::Hello(h)) = &got.msg {
            let status = h.status.as_ref().expect("the Hello's status");
            assert_eq!(status.applied_commit, "applied_commit-3");
            assert!(!status.problems.is_empty());
        }
    }

    // What the new coordinator sends an agent, read by the 0.1.0 schema.
    let coord_msg = old
        .get_message_by_name("ferry.v1.CoordinatorMessage")
        .unwrap();
    let assignment = ferry_proto::v1::CoordinatorMessage {
        msg: Some(ferry_proto::v1::coordinator_message::Msg::Assignment(
            ferry_proto::v1::Assignment {
                repo_url: "git://h/fleet.git".into(),
                commit: "e".repeat(40),
                path: "clusters/a".into(),
                generation: 9,
                options: Some(ferry_proto::v1::AssignmentOptions {
                    allow_mass_prune: true,
                }),
                rollout: "r1".into(),
                labels: [("region".to_string(), "eu".to_string())].into(),
                site: "dmz".into(),
            },
        )),
    };
    let read = DynamicMessage::decode(coord_msg, assignment.encode_to_vec().as_slice()).unwrap();
    let a = read.get_field_by_name("assignment").expect("an assignment");
    let a = a.as_message().unwrap();
    assert_eq!(
        a.get_field_by_name("commit").unwrap().as_str(),
        Some("e".repeat(40).as_str())
    );
    assert_eq!(a.get_field_by_name("generation").unwrap().as_u64(), Some(9));
    let opts = a.get_field_by_name("options").unwrap();
    assert_eq!(
        opts.as_message()
            .unwrap()
            .get_field_by_name("allow_mass_prune")
            .unwrap()
            .as_bool(),
        Some(true)
    );

    // Enrollment, both ways.
    let enroll = old.get_message_by_name("ferry.v1.EnrollRequest").unwrap();
    let sent = filled(&enroll, 0);
    let got = ferry_proto::v1::EnrollRequest::decode(sent.encode_to_vec().as_slice()).unwrap();
    assert_eq!(got.join_token, "join_token-1");
    let resp = ferry_proto::v1::EnrollResponse {
        cluster: "a".into(),
        cert_pem: "c".into(),
        ca_pem: "ca".into(),
        not_before_unix_ms: 1,
        not_after_unix_ms: 2,
    };
    let read = DynamicMessage::decode(
        old.get_message_by_name("ferry.v1.EnrollResponse").unwrap(),
        resp.encode_to_vec().as_slice(),
    )
    .unwrap();
    assert_eq!(
        read.get_field_by_name("not_after_unix_ms")
            .unwrap()
            .as_i64(),
        Some(2)
    );
}
