//! An RPC-style request's parameters: the query string and an `x-www-form-urlencoded` body,
//! decoded once (with `form_urlencoded`) after the raw text is checked, so that what is signed,
//! what is read and what is refused all see the same values.

use std::collections::HashMap;

/// More parameters than any action takes (CreateSnapshot with 20 tags is about 60).
pub const MAX_PARAMETERS: usize = 256;

/// Why a request's parameters could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("{0}")]
    Malformed(String),
    #[error("the parameter {0} is given more than once")]
    Duplicate(String),
    #[error("more than {MAX_PARAMETERS} parameters")]
    TooMany,
}

/// The parameters of one request, in arrival order (query first, then body).
#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
    query_len: usize,
    index: HashMap<String, usize>,
}

impl Params {
    /// Reads `query` and, when there is one, the form `body`. Refuses a `%` not followed by two
    /// hex digits, text that is not UTF-8 once decoded, a name given twice, an empty name, and
    /// more than [`MAX_PARAMETERS`].
    pub fn decode(query: &str, form_body: &[u8]) -> Result<Self, ParamsError> {
        let mut params = Self::default();
        params.add(query.as_bytes(), "query string")?;
        params.query_len = params.pairs.len();
        params.add(form_body, "body")?;
        Ok(params)
    }

    fn add(&mut self, raw: &[u8], source: &str) -> Result<(), ParamsError> {
        check_escapes(raw, source)?;
        // `&` and `=` are ASCII, so each decoded part is UTF-8 when the whole is.
        if percent_encoding::percent_decode(raw).decode_utf8().is_err() {
            return Err(ParamsError::Malformed(format!(
                "the {source} is not UTF-8 once percent-decoded"
            )));
        }
        for (key, value) in form_urlencoded::parse(raw) {
            if key.is_empty() {
                if value.is_empty() {
                    continue;
                }
                return Err(ParamsError::Malformed(format!(
                    "a parameter in the {source} has no name"
                )));
            }
            if self.pairs.len() == MAX_PARAMETERS {
                return Err(ParamsError::TooMany);
            }
            if self.index.contains_key(key.as_ref()) {
                return Err(ParamsError::Duplicate(key.into_owned()));
            }
            self.index.insert(key.to_string(), self.pairs.len());
            self.pairs.push((key.into_owned(), value.into_owned()));
        }
        Ok(())
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&at| self.pairs[at].1.as_str())
    }

    /// The value of `name`, or empty when not given (the domain's "not given").
    pub fn text(&self, name: &str) -> &str {
        self.get(name).unwrap_or_default()
    }

    /// Every parameter, query and body.
    pub fn all(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The query string's parameters only.
    pub fn query(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs[..self.query_len]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The names that start with `prefix`.
    pub fn names_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(move |k| k.starts_with(prefix))
    }
}

/// Every `%` must start an escape of two hex digits.
fn check_escapes(raw: &[u8], source: &str) -> Result<(), ParamsError> {
    let mut at = 0;
    while let Some(offset) = raw[at..].iter().position(|&b| b == b'%') {
        let start = at + offset;
        let escape = raw.get(start + 1..start + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err(ParamsError::Malformed(format!(
                "the {source} has a `%` at byte {start} that is not followed by two hex digits"
            )));
        }
        at = start + 3;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_body_are_read_in_order() {
        let params = Params::decode("Action=CreateSnapshot&Tag.1.Key=a%20b", b"DiskId=d-1&X=+y")
            .expect("valid");
        assert_eq!(params.get("Tag.1.Key"), Some("a b"));
        assert_eq!(params.get("X"), Some(" y"));
        assert_eq!(params.text("Missing"), "");
        assert_eq!(params.query().count(), 2);
        assert_eq!(params.all().count(), 4);
    }

    #[test]
    fn malformed_parameters_are_refused() {
        let many = (0..=MAX_PARAMETERS)
            .map(|i| format!("P{i}=v"))
            .collect::<Vec<_>>()
            .join("&");
        let cases: Vec<(String, Vec<u8>, ParamsError)> =
            vec![
            (
                "A=%zz".into(),
                vec![],
                ParamsError::Malformed(
                    "the query string has a `%` at byte 2 that is not followed by two hex digits"
                        .into(),
                ),
            ),
            (
                "A=%4".into(),
                vec![],
                ParamsError::Malformed(
                    "the query string has a `%` at byte 2 that is not followed by two hex digits"
                        .into(),
                ),
            ),
            (
                "A=%ff".into(),
                vec![],
                ParamsError::Malformed("the query string is not UTF-8 once percent-decoded".into()),
            ),
            (
                String::new(),
                b"A=\xff".to_vec(),
                ParamsError::Malformed("the body is not UTF-8 once percent-decoded".into()),
            ),
            ("A=1&A=2".into(), vec![], ParamsError::Duplicate("A".into())),
            ("A=1".into(), b"A=2".to_vec(), ParamsError::Duplicate("A".into())),
            (
                "=x".into(),
                vec![],
                ParamsError::Malformed("a parameter in the query string has no name".into()),
            ),
            (many, vec![], ParamsError::TooMany),
        ];
        for (query, body, expected) in cases {
            assert_eq!(
                Params::decode(&query, &body).map(|_| ()),
                Err(expected),
                "{query:.40}"
            );
        }
    }

    #[test]
    fn empty_pieces_are_skipped() {
        let params = Params::decode("&&A=1&&", b"").expect("valid");
        assert_eq!(params.all().count(), 1);
    }
}
