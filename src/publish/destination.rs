//! Broker names rendered from a request are checked before anything reaches a broker: a Kafka topic is 1 to 249
//! of `[A-Za-z0-9._-]`, not `.` or `..`, and does not start with `__` (Kafka's internal topics); an AMQP routing key
//! is at most 255 bytes; and when the route lists `allowed_topics` / `allowed_routing_keys`, the name must match
//! one of them (`*` matches any run of characters). Anything else is a `400` naming the field: nothing is published.

use super::message::Destination;
use crate::problem::GatewayError;

/// Longest Kafka topic name.
pub const MAX_TOPIC_LEN: usize = 249;
/// Longest AMQP routing key, in bytes (a short string in AMQP 0-9-1).
pub const MAX_ROUTING_KEY_LEN: usize = 255;

/// A publish route's rules for the names it renders.
#[derive(Clone, Debug, Default)]
pub struct NameRules {
    /// `allowed_topics` (Kafka) or `allowed_routing_keys` (AMQP); empty: any valid name.
    pub allowed: Vec<String>,
}

impl NameRules {
    /// `Ok` when `destination` may be published to.
    pub fn check(&self, destination: &Destination) -> Result<(), GatewayError> {
        let (field, list, name) = match destination {
            Destination::Kafka { topic, .. } => {
                if let Some(why) = topic_problem(topic) {
                    return Err(refuse(format!("publish.topic {} is not a valid Kafka topic: {why}", shown(topic))));
                }
                ("publish.topic", "allowed_topics", topic)
            }
            // The queue is a literal of the route's (no template): nothing the client sent.
            Destination::Sqs { .. } => return Ok(()),
            Destination::Amqp { routing_key, .. } => {
                if routing_key.len() > MAX_ROUTING_KEY_LEN {
                    return Err(refuse(format!(
                        "publish.routing_key is {} bytes long; an AMQP routing key is at most {MAX_ROUTING_KEY_LEN}",
                        routing_key.len()
                    )));
                }
                ("publish.routing_key", "allowed_routing_keys", routing_key)
            }
        };
        if self.allowed.is_empty() || self.allowed.iter().any(|p| glob_matches(p, name)) {
            Ok(())
        } else {
            Err(refuse(format!("{field} {} is not one of the route's {list}", shown(name))))
        }
    }
}

fn refuse(detail: String) -> GatewayError {
    GatewayError::BadRequest(detail)
}

/// A client-made name as shown in an error: quoted, and cut after 64 characters.
fn shown(name: &str) -> String {
    match name.char_indices().nth(64) {
        Some((at, _)) => format!("{:?}…", &name[..at]),
        None => format!("{name:?}"),
    }
}

/// Why `topic` cannot be a Kafka topic, or `None` when it can.
pub fn topic_problem(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        Some("it is empty")
    } else if topic.len() > MAX_TOPIC_LEN {
        Some("it is longer than 249 characters")
    } else if topic == "." || topic == ".." {
        Some("\".\" and \"..\" are not topic names")
    } else if topic.starts_with("__") {
        Some("names starting with \"__\" are Kafka's internal topics")
    } else if !topic.bytes().all(is_topic_byte) {
        Some("only letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    }
}

/// A byte Kafka allows in topic names.
pub fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (also none) and every other
/// character matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently taken to reach.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more character.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn kafka(topic: &str) -> Destination {
        Destination::Kafka { topic: topic.to_owned(), key: None::<Bytes>, partition: None }
    }

    fn amqp(routing_key: &str) -> Destination {
        Destination::Amqp { exchange: "x".into(), routing_key: routing_key.to_owned(), persistent: true }
    }

    #[test]
    fn kafka_topics_follow_kafkas_rules() {
        let any = NameRules::default();
        for ok in ["orders.acme", "a", "A-b_c.9", &"t".repeat(249), "_single"] {
            assert!(any.check(&kafka(ok)).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "__consumer_offsets", "a/b", "a%2Fb", "tab\t", "é", &"t".repeat(250)] {
            let err = any.check(&kafka(bad)).unwrap_err();
            assert!(err.to_string().starts_with("publish.topic "), "{bad}: {err}");
        }
    }

    #[test]
    fn routing_keys_are_at_most_255_bytes() {
        let any = NameRules::default();
        assert!(any.check(&amqp(&"k".repeat(255))).is_ok());
        assert!(any.check(&amqp("")).is_ok(), "the default exchange takes an empty key too");
        let err = any.check(&amqp(&"k".repeat(256))).unwrap_err();
        assert!(err.to_string().contains("publish.routing_key") && err.to_string().contains("255"), "{err}");
    }

    #[test]
    fn allow_lists_are_globs() {
        let rules = NameRules { allowed: vec!["orders.*".into(), "audit".into()] };
        assert!(rules.check(&kafka("orders.acme")).is_ok());
        assert!(rules.check(&kafka("audit")).is_ok());
        let err = rules.check(&kafka("billing.acme")).unwrap_err();
        assert_eq!(err.to_string(), "publish.topic \"billing.acme\" is not one of the route's allowed_topics");
        let rules = NameRules { allowed: vec!["github.*".into()] };
        assert!(rules.check(&amqp("github.push")).is_ok());
        assert!(rules.check(&amqp("billing.charge")).unwrap_err().to_string().contains("allowed_routing_keys"));
    }

    #[test]
    fn glob_matching() {
        for (p, t, m) in [
            ("*", "", true),
            ("*", "anything", true),
            ("a*", "a", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbcd", false),
            ("*.acme", "orders.acme", true),
            ("o*s.*", "orders.acme", true),
            ("a*b*c", "aXbYbZc", true),
            ("abc", "abd", false),
            ("a**", "ab", true),
        ] {
            assert_eq!(glob_matches(p, t), m, "{p} ~ {t}");
        }
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let err = NameRules::default().check(&kafka(&"x/".repeat(1000))).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }
}
