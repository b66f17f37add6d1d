//! Writes the seed corpus of the `dns_message` target (committed under corpus/dns_message):
//! replies built with hickory-proto to the queries the check makes (SRV, A, AAAA), framed as
//! the check reads them (mode byte, length, datagram, random bytes for the ordering).
//! `cargo run --example dns_seeds` from fuzz/.

use fuzz_checks::dns_seed_constants::{HOST_NAME, ID, SRV_NAME};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::path::Path;

fn reply(qname: &str, rtype: RecordType, rcode: ResponseCode, answers: Vec<Record>) -> Message {
    let mut m = Message::new(ID, MessageType::Response, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii(format!("{qname}.")).unwrap(),
        rtype,
    ));
    m.metadata.response_code = rcode;
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    for a in answers {
        m.add_answer(a);
    }
    m
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn srv(owner: &str, prio: u16, weight: u16, port: u16, target: &str) -> Record {
    Record::from_rdata(
        name(owner),
        300,
        RData::SRV(SRV::new(prio, weight, port, name(target))),
    )
}

fn main() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/dns_message");
    std::fs::create_dir_all(&out).unwrap();
    let q = &format!("{SRV_NAME}.");
    let h = &format!("{HOST_NAME}.");
    // (mode, message): mode 0 SRV, 1 A, 2 AAAA; bits 2.. split the SRV set.
    let mut seeds: Vec<(u8, Message)> = vec![
        (
            0,
            reply(
                SRV_NAME,
                RecordType::SRV,
                ResponseCode::NoError,
                vec![srv(q, 10, 5, 5269, "xmpp.example.test.")],
            ),
        ),
        (
            4,
            reply(
                SRV_NAME,
                RecordType::SRV,
                ResponseCode::NoError,
                vec![
                    srv(q, 10, 60, 5269, "a.example.test."),
                    srv(q, 10, 30, 5270, "B.Example.Test."),
                    srv(q, 10, 0, 5271, "c.example.test."),
                    srv(q, 20, 10, 5269, "d.example.test."),
                    srv(q, 5, 0, 5223, "tls.example.test."),
                ],
            ),
        ),
        (
            0,
            reply(
                SRV_NAME,
                RecordType::SRV,
                ResponseCode::NoError,
                vec![srv(q, 0, 0, 0, ".")],
            ),
        ),
        (
            4,
            reply(
                SRV_NAME,
                RecordType::SRV,
                ResponseCode::NoError,
                vec![srv(q, 0, 0, 0, "."), srv(q, 1, 1, 5223, "t.example.test.")],
            ),
        ),
        (
            0,
            reply(SRV_NAME, RecordType::SRV, ResponseCode::NoError, vec![]),
        ),
        (
            0,
            reply(SRV_NAME, RecordType::SRV, ResponseCode::NXDomain, vec![]),
        ),
        (
            0,
            reply(SRV_NAME, RecordType::SRV, ResponseCode::ServFail, vec![]),
        ),
        (
            0,
            reply(SRV_NAME, RecordType::SRV, ResponseCode::Refused, vec![]),
        ),
        (
            0,
            reply(
                SRV_NAME,
                RecordType::SRV,
                ResponseCode::NoError,
                vec![
                    Record::from_rdata(
                        name(q),
                        300,
                        RData::CNAME(CNAME(name("alias.example.test."))),
                    ),
                    srv("alias.example.test.", 1, 1, 5269, "x.example.test."),
                    srv("other.example.test.", 1, 1, 5269, "not-ours.example.test."),
                ],
            ),
        ),
        (
            0,
            reply(
                SRV_NAME,
                RecordType::SRV,
                ResponseCode::NoError,
                vec![
                    Record::from_rdata(name(q), 300, RData::CNAME(CNAME(name("l1.example.test.")))),
                    Record::from_rdata(name("l1.example.test."), 300, RData::CNAME(CNAME(name(q)))),
                    srv(q, 1, 1, 5269, "loop.example.test."),
                ],
            ),
        ),
        (
            1,
            reply(
                HOST_NAME,
                RecordType::A,
                ResponseCode::NoError,
                vec![
                    Record::from_rdata(name(h), 60, RData::A(A::new(192, 0, 2, 1))),
                    Record::from_rdata(name(h), 60, RData::A(A::new(127, 0, 0, 1))),
                ],
            ),
        ),
        (
            2,
            reply(
                HOST_NAME,
                RecordType::AAAA,
                ResponseCode::NoError,
                vec![
                    Record::from_rdata(
                        name(h),
                        60,
                        RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                    ),
                    Record::from_rdata(name(h), 60, RData::A(A::new(192, 0, 2, 1))),
                ],
            ),
        ),
        (
            1,
            reply(HOST_NAME, RecordType::A, ResponseCode::NXDomain, vec![]),
        ),
        // Wrong id, wrong question: ignored.
        (
            1,
            reply(SRV_NAME, RecordType::A, ResponseCode::NoError, vec![]),
        ),
    ];
    let mut other_id = reply(HOST_NAME, RecordType::A, ResponseCode::NoError, vec![]);
    other_id.metadata.id = ID ^ 1;
    seeds.push((1, other_id));
    let mut truncated = reply(SRV_NAME, RecordType::SRV, ResponseCode::NoError, vec![]);
    truncated.metadata.truncation = true;
    seeds.push((0, truncated));
    for (i, (mode, msg)) in seeds.iter().enumerate() {
        let wire = msg.to_vec().unwrap();
        let mut data = vec![*mode];
        data.extend_from_slice(&(wire.len() as u16).to_be_bytes());
        data.extend_from_slice(&wire);
        data.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 1, 255, 255, 255, 255, 0, 0, 0, 2]);
        std::fs::write(out.join(format!("reply-{i:02}")), &data).unwrap();
    }
    // A truncated datagram that does not decode, but whose header says TC.
    let wire = seeds[0].1.to_vec().unwrap();
    let mut data = vec![0u8, 0, 20];
    let mut head = wire[..20].to_vec();
    head[2] |= 0x82;
    data.extend_from_slice(&head);
    std::fs::write(out.join("reply-tc-undecodable"), &data).unwrap();
    println!("{} seeds in {}", seeds.len() + 1, out.display());
}
