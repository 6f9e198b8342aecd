//! One spooled message on disk: a length-prefixed, checksummed frame around the message's metadata (JSON) and its
//! body (raw bytes), so that a torn or corrupted frame is told apart from a whole one.
//!
//! ```text
//! | payload length: u32 LE | CRC-32 of the payload: u32 LE | payload                                  |
//!                                                            | metadata length: u32 LE | metadata | body |
//! ```
//! The metadata carries everything the broker client needs to publish the message as it would have been
//! published at first: the `sluice-id`, the content type, every header and the destination.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::publish::message::{Destination, Message};

/// Bytes before the payload: its length and its checksum.
pub const HEADER_LEN: usize = 8;
/// The largest payload a frame may claim; anything larger is a corrupted length.
pub const MAX_PAYLOAD: usize = 1 << 30;

/// The metadata of a spooled message.
#[derive(Serialize, Deserialize)]
struct Meta {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    headers: Vec<(Cow<'static, str>, String)>,
    to: To,
}

/// Where a spooled message goes (a Kafka key is base64: keys may be any bytes).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum To {
    Kafka {
        topic: String,
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partition: Option<i32>,
    },
    Amqp {
        exchange: String,
        routing_key: String,
        persistent: bool,
    },
    Sqs {
        queue: String,
        group_id: Option<String>,
        dedup_id: Option<String>,
    },
}

/// The frame of `msg`, ready to be appended.
#[must_use]
pub fn encode(msg: &Message) -> Vec<u8> {
    let to = match &msg.destination {
        Destination::Kafka { topic, key, partition } => {
            To::Kafka { topic: topic.clone(), key: key.as_ref().map(|k| STANDARD.encode(k)), partition: *partition }
        }
        Destination::Amqp { exchange, routing_key, persistent } => {
            To::Amqp { exchange: exchange.clone(), routing_key: routing_key.clone(), persistent: *persistent }
        }
        Destination::Sqs { queue, group_id, dedup_id } => {
            To::Sqs { queue: queue.clone(), group_id: group_id.clone(), dedup_id: dedup_id.clone() }
        }
    };
    let meta = Meta { id: msg.id.clone(), content_type: msg.content_type.clone(), headers: msg.headers.clone(), to };
    let meta = serde_json::to_vec(&meta).expect("metadata serializes");
    let payload_len = 4 + meta.len() + msg.body.len();
    let mut frame = Vec::with_capacity(HEADER_LEN + payload_len);
    frame.extend_from_slice(&(payload_len as u32).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    frame.extend_from_slice(&meta);
    frame.extend_from_slice(&msg.body);
    let crc = crc32fast::hash(&frame[HEADER_LEN..]);
    frame[4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame of this many bytes (header included) whose checksum matches.
    Whole(usize),
    /// The buffer ends inside the frame: more bytes are needed (at the end of a file: a torn write).
    Short,
    /// The checksum does not match, or the length cannot be right.
    Corrupt,
}

/// Checks the frame at the start of `buf`.
#[must_use]
pub fn check(buf: &[u8]) -> Frame {
    if buf.len() < HEADER_LEN {
        return Frame::Short;
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if !(4..=MAX_PAYLOAD).contains(&len) {
        return Frame::Corrupt;
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Frame::Short;
    };
    let crc = u32::from_le_bytes(buf[4..HEADER_LEN].try_into().expect("4 bytes"));
    if crc32fast::hash(payload) == crc { Frame::Whole(HEADER_LEN + len) } else { Frame::Corrupt }
}

/// The message in a whole frame (as [`check`] found it); `None` when its metadata cannot be read.
#[must_use]
pub fn decode(frame: Bytes) -> Option<Message> {
    let payload = frame.slice(HEADER_LEN..);
    let meta_len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let meta: Meta = serde_json::from_slice(payload.get(4..4 + meta_len)?).ok()?;
    let body = payload.slice(4 + meta_len..);
    let destination = match meta.to {
        To::Kafka { topic, key, partition } => {
            let key = match key {
                Some(k) => Some(Bytes::from(STANDARD.decode(k).ok()?)),
                None => None,
            };
            Destination::Kafka { topic, key, partition }
        }
        To::Amqp { exchange, routing_key, persistent } => Destination::Amqp { exchange, routing_key, persistent },
        To::Sqs { queue, group_id, dedup_id } => Destination::Sqs { queue, group_id, dedup_id },
    };
    Some(Message { id: meta.id, body, content_type: meta.content_type, headers: meta.headers, destination })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka() -> Message {
        Message {
            id: Message::new_id(),
            body: Bytes::from_static(b"\x00\xffbinary body"),
            content_type: Some("application/octet-stream".into()),
            headers: vec![("sluice-route".into(), "r".into()), ("traceparent".into(), "00-ab-cd-01".into())],
            destination: Destination::Kafka {
                topic: "orders".into(),
                key: Some(Bytes::from_static(b"\x01k")),
                partition: Some(2),
            },
        }
    }

    #[test]
    fn a_frame_gives_back_the_message_it_was_made_of() {
        let amqp = Message {
            destination: Destination::Amqp { exchange: "".into(), routing_key: "q".into(), persistent: true },
            content_type: None,
            body: Bytes::new(),
            ..kafka()
        };
        for msg in [kafka(), amqp] {
            let frame = encode(&msg);
            assert_eq!(check(&frame), Frame::Whole(frame.len()));
            assert_eq!(decode(Bytes::from(frame)), Some(msg));
        }
    }

    #[test]
    fn a_torn_or_flipped_frame_is_never_taken_for_a_whole_one() {
        let frame = encode(&kafka());
        for cut in 0..frame.len() {
            assert_eq!(check(&frame[..cut]), Frame::Short, "cut at {cut}");
        }
        for at in 4..frame.len() {
            let mut bad = frame.clone();
            bad[at] ^= 0x40;
            assert_eq!(check(&bad), Frame::Corrupt, "flipped byte {at}");
        }
        assert_eq!(check(&[0xff; 16]), Frame::Corrupt);
    }
}
