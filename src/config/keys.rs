//! Key-by-key deserialization of one config table: every unknown key and every bad value is reported with its
//! path, and the table is still built from the keys that are fine, so `validate()` can check them too.
//!
//! A derived `Deserialize` stops at the first problem of a struct. Here each struct's own derived impl is driven
//! by [`Keys`], a deserializer over a `serde_json::Value` that
//! - reports the keys a struct does not declare, and skips them. The list of declared keys is the one the derive
//!   hands to `deserialize_struct`, so every table declares its keys exactly once: as the fields of its struct
//!   (renames and `skip` included). No extra crate: `serde_path_to_error` would give paths but still stop at the
//!   first error, and `serde_ignored` would make unknown keys warnings rather than errors.
//! - tags a failing value with its path (`retry.backoff`, `endpoints[1]`).
//!
//! [`parse`] records the failing value, deserializes again without it, and repeats until the struct builds from
//! what is left (defaults stand in for the removed keys) or a required key is missing. Paths always refer to the
//! document as written: removed values are skipped, never deleted, so array indices do not shift.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::value::StringDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde_json::Value;

/// A table deserialized key by key.
pub(super) struct Parsed<T> {
    /// The value built from the keys that were fine; `None` when a required key is missing or bad, or the value is
    /// not a table.
    pub value: Option<T>,
    /// Top-level keys that were written but left out because their value was bad (their errors are reported).
    pub dropped: BTreeSet<String>,
}

/// Deserializes `value` as a `T`, pushing `"{at}: {path}: {problem}"` for every unknown key and bad value.
pub(super) fn parse<T: DeserializeOwned>(value: &Value, at: &str, errors: &mut Vec<String>) -> Parsed<T> {
    let mut removed: BTreeSet<Path> = BTreeSet::new();
    let mut problems: Vec<(Path, String)> = Vec::new();
    // Ends: every pass that fails either stops or skips one more value of a finite document.
    let built = loop {
        let found = RefCell::new(Vec::new());
        let result = T::deserialize(Keys { value, path: Path::default(), removed: &removed, unknown: &found });
        for problem in found.into_inner() {
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
        let error = match result {
            Ok(t) => break Some(t),
            Err(e) => e,
        };
        let path = error.path.unwrap_or_default();
        // A required key whose bad value was removed is now missing: its own error is already recorded.
        let consequence = removed.iter().any(|r| r.parent().as_ref() == Some(&path) && error.msg == r.missing_field());
        if !consequence {
            problems.push((path.clone(), error.msg));
        }
        // The whole table failed (not a table, or a required key missing): nothing left to remove.
        if path.0.is_empty() || !removed.insert(path) {
            break None;
        }
    };
    problems.sort_by(|a, b| a.0.cmp(&b.0));
    errors.extend(
        problems
            .into_iter()
            .map(|(path, msg)| if path.0.is_empty() { format!("{at}: {msg}") } else { format!("{at}: {path}: {msg}") }),
    );
    let dropped = removed
        .iter()
        .filter_map(|p| match p.0.as_slice() {
            [Seg::Key(k)] => Some(k.clone()),
            _ => None,
        })
        .collect();
    Parsed { value: built, dropped }
}

/// Where a value sits inside the table being parsed: `forward.timeout`, `endpoints[1]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Path(Vec<Seg>);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(usize),
}

impl Path {
    fn join(&self, seg: Seg) -> Path {
        let mut p = self.0.clone();
        p.push(seg);
        Path(p)
    }

    fn parent(&self) -> Option<Path> {
        self.0.split_last().map(|(_, rest)| Path(rest.to_vec()))
    }

    /// serde's message for this key missing from its struct.
    fn missing_field(&self) -> String {
        match self.0.last() {
            Some(Seg::Key(k)) => format!("missing field `{k}`"),
            _ => String::new(),
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A deserialization error and the path of the value that caused it (`None`: the table itself).
#[derive(Debug)]
struct Error {
    path: Option<Path>,
    msg: String,
}

impl Error {
    /// Attributes the error to `path` unless a deeper value already claimed it.
    fn at(mut self, path: Path) -> Self {
        self.path.get_or_insert(path);
        self
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error { path: None, msg: msg.to_string() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

fn json<T>(r: Result<T, serde_json::Error>) -> Result<T, Error> {
    r.map_err(de::Error::custom)
}

/// Deserializer over one value of the table; see the module documentation.
struct Keys<'de, 'p> {
    value: &'de Value,
    path: Path,
    /// Values to skip: they failed in an earlier attempt.
    removed: &'p BTreeSet<Path>,
    /// Unknown keys found so far, as (path of their table, message).
    unknown: &'p RefCell<Vec<(Path, String)>>,
}

impl<'de, 'p> Keys<'de, 'p> {
    fn child(&self, seg: Seg, value: &'de Value) -> Self {
        Keys { value, path: self.path.join(seg), removed: self.removed, unknown: self.unknown }
    }

    fn entries(self, map: impl Iterator<Item = (&'de String, &'de Value)>) -> Entries<'de, 'p> {
        let items = map
            .map(|(k, v)| self.child(Seg::Key(k.clone()), v))
            .filter(|c| !self.removed.contains(&c.path))
            .collect::<Vec<_>>();
        Entries { items: items.into_iter(), pending: None }
    }
}

impl<'de> Deserializer<'de> for Keys<'de, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Object(map) => visitor.visit_map(self.entries(map.iter())),
            Value::Array(items) => {
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.child(Seg::Index(i), v))
                    .filter(|c| !self.removed.contains(&c.path))
                    .collect::<Vec<_>>();
                visitor.visit_seq(Items(items.into_iter()))
            }
            other => json(other.deserialize_any(visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let Value::Object(map) = self.value else {
            return Err(de::Error::custom(format_args!("must be a table, not {}", unexpected(self.value))));
        };
        for key in map.keys().filter(|k| !fields.contains(&k.as_str())) {
            let msg = format!("unknown key `{key}`, expected one of {}", fields.join(", "));
            self.unknown.borrow_mut().push((self.path.clone(), msg));
        }
        let known = map.iter().filter(|(k, _)| fields.contains(&k.as_str()));
        visitor.visit_map(self.entries(known))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        json(self.value.deserialize_enum(name, variants, visitor))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        seq tuple tuple_struct map identifier ignored_any
    }
}

/// The entries of a table, each value deserialized by its own [`Keys`].
struct Entries<'de, 'p> {
    items: std::vec::IntoIter<Keys<'de, 'p>>,
    pending: Option<Keys<'de, 'p>>,
}

impl<'de> MapAccess<'de> for Entries<'de, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(item) = self.items.next() else { return Ok(None) };
        let key = match item.path.0.last() {
            Some(Seg::Key(k)) => k.clone(),
            _ => return Err(de::Error::custom("table entry without a key")),
        };
        self.pending = Some(item);
        seed.deserialize(StringDeserializer::<Error>::new(key)).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let item = self.pending.take().ok_or_else(|| de::Error::custom("value asked for before its key"))?;
        let path = item.path.clone();
        seed.deserialize(item).map_err(|e| e.at(path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The elements of an array, each deserialized by its own [`Keys`].
struct Items<'de, 'p>(std::vec::IntoIter<Keys<'de, 'p>>);

impl<'de> SeqAccess<'de> for Items<'de, '_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, Error> {
        let Some(item) = self.0.next() else { return Ok(None) };
        let path = item.path.clone();
        seed.deserialize(item).map(Some).map_err(|e| e.at(path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

/// How a value that is not a table is described in messages: `integer `5``, `string "x"`.
fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Unexpected::Unsigned(u),
            (_, Some(i)) => Unexpected::Signed(i),
            _ => Unexpected::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}
