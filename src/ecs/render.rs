//! Answers in the format the request asked for: JSON (the default) or XML (`Format=XML`), in
//! ECS's shapes. A body is built once as a JSON value; XML renders the same tree, a list as
//! its element repeated (`"Snapshots": {"Snapshot": [a, b]}` is
//! `<Snapshots><Snapshot>a</Snapshot><Snapshot>b</Snapshot></Snapshots>`), as ECS does.

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// `Format` as given (any case); `None` for a value that is neither.
    pub fn parse(raw: Option<&str>) -> Option<Self> {
        match raw {
            None | Some("") => Some(Self::Json),
            Some(raw) if raw.eq_ignore_ascii_case("json") => Some(Self::Json),
            Some(raw) if raw.eq_ignore_ascii_case("xml") => Some(Self::Xml),
            Some(_) => None,
        }
    }

    /// The content types the SDKs look for (the Python SDK parses an error as XML only when it
    /// is exactly `text/xml;charset=utf-8`).
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json;charset=utf-8",
            Self::Xml => "text/xml;charset=utf-8",
        }
    }

    /// `body` as this format, under `root` for XML (`CreateSnapshotResponse`, `Error`).
    pub fn render(self, root: &str, body: &Value) -> Vec<u8> {
        match self {
            Self::Json => serde_json::to_vec(body).expect("a JSON value always serializes"),
            Self::Xml => xml(root, body),
        }
    }
}

fn xml(root: &str, body: &Value) -> Vec<u8> {
    let mut writer = Writer::new(Vec::new());
    write(
        &mut writer,
        Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)),
    );
    element(&mut writer, root, body);
    writer.into_inner()
}

fn element(writer: &mut Writer<Vec<u8>>, name: &str, value: &Value) {
    match value {
        Value::Array(items) => {
            for item in items {
                element(writer, name, item);
            }
        }
        Value::Object(fields) => {
            write(writer, Event::Start(BytesStart::new(name)));
            for (key, field) in fields {
                element(writer, key, field);
            }
            write(writer, Event::End(BytesEnd::new(name)));
        }
        Value::Null => write(writer, Event::Empty(BytesStart::new(name))),
        Value::String(text) => text_element(writer, name, text),
        other => text_element(writer, name, &other.to_string()),
    }
}

fn text_element(writer: &mut Writer<Vec<u8>>, name: &str, text: &str) {
    write(writer, Event::Start(BytesStart::new(name)));
    write(writer, Event::Text(BytesText::new(&xml_chars(text))));
    write(writer, Event::End(BytesEnd::new(name)));
}

/// XML 1.0 cannot carry control characters other than tab, newline and carriage return, even
/// escaped: each becomes U+FFFD, so an answer stays well-formed whatever a client stored.
fn xml_chars(text: &str) -> std::borrow::Cow<'_, str> {
    let allowed = |c: char| {
        (c >= ' ' || matches!(c, '\t' | '\n' | '\r')) && !matches!(c, '\u{fffe}' | '\u{ffff}')
    };
    if text.chars().all(allowed) {
        std::borrow::Cow::Borrowed(text)
    } else {
        text.chars()
            .map(|c| if allowed(c) { c } else { '\u{fffd}' })
            .collect::<String>()
            .into()
    }
}

fn write(writer: &mut Writer<Vec<u8>>, event: Event<'_>) {
    // Writing into a Vec cannot fail.
    writer
        .write_event(event)
        .expect("writing XML into memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_parse_in_any_case() {
        let cases = [
            (None, Some(Format::Json)),
            (Some("JSON"), Some(Format::Json)),
            (Some("xml"), Some(Format::Xml)),
            (Some("yaml"), None),
        ];
        for (raw, expected) in cases {
            assert_eq!(Format::parse(raw), expected, "{raw:?}");
        }
    }

    #[test]
    fn control_characters_do_not_break_xml() {
        let body = json!({"Description": "a\u{1}b\u{1b}[31m\tc"});
        let rendered = String::from_utf8(Format::Xml.render("R", &body)).expect("UTF-8");
        assert!(
            rendered.contains("<Description>a\u{fffd}b\u{fffd}[31m\tc</Description>"),
            "{rendered}"
        );
    }

    #[test]
    fn xml_repeats_list_elements_and_escapes_text() {
        let body = json!({
            "RequestId": "R-1",
            "Snapshots": {"Snapshot": [{"SnapshotId": "s-1"}, {"SnapshotId": "s-<2>"}]},
            "TotalCount": 2,
        });
        let rendered = String::from_utf8(Format::Xml.render("DescribeSnapshotsResponse", &body))
            .expect("UTF-8");
        assert_eq!(
            rendered,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DescribeSnapshotsResponse>\
             <RequestId>R-1</RequestId><Snapshots><Snapshot><SnapshotId>s-1</SnapshotId>\
             </Snapshot><Snapshot><SnapshotId>s-&lt;2&gt;</SnapshotId></Snapshot></Snapshots>\
             <TotalCount>2</TotalCount></DescribeSnapshotsResponse>"
        );
    }
}
