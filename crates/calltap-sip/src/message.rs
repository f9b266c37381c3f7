//! The parsed, owned form of a SIP message and the name-addr values of From/To/Contact.
//!
//! SIP messages are rare next to RTP, so an owned representation (plain `String`s) is cheap
//! enough and lets the tracker keep values without lifetimes tying it to capture buffers.

use serde::{Deserialize, Serialize};

/// First line of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD Request-URI SIP/2.0`
    Request { method: String, uri: String },
    /// `SIP/2.0 code reason`
    Response { code: u16, reason: String },
}

/// One header line, unfolded, with a compact name expanded to its full form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// One SIP request or response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    /// Headers in wire order; repeated names are kept as separate entries.
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// Method of a request (`None` for responses; use [`Message::cseq`] for theirs).
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// Status code of a response.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    /// Value of the first header called `name` (case-insensitive; compact forms were expanded
    /// at parse time, so `header("Call-ID")` also finds `i:`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every value of the headers called `name`, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// `CSeq: 314 INVITE` as `(314, "INVITE")`.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("CSeq")?;
        let mut it = v.split_ascii_whitespace();
        let n = it.next()?.parse().ok()?;
        let method = it.next()?;
        Some((n, method.to_string()))
    }

    pub fn from(&self) -> Option<NameAddr> {
        NameAddr::parse(self.header("From")?)
    }

    pub fn to(&self) -> Option<NameAddr> {
        NameAddr::parse(self.header("To")?)
    }

    /// The first Contact, if it is a single name-addr (`*` and lists take the first entry).
    pub fn contact(&self) -> Option<NameAddr> {
        let v = self.header("Contact")?;
        NameAddr::parse(first_list_item(v))
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("Content-Type").map(str::trim)
    }

    /// Whether the body's media type is `mime` (`type/subtype`, parameters ignored).
    pub fn content_type_is(&self, mime: &str) -> bool {
        self.content_type()
            .map(|ct| media_type(ct).eq_ignore_ascii_case(mime))
            .unwrap_or(false)
    }
}

/// `type/subtype` of a Content-Type value, without parameters.
pub(crate) fn media_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// First element of a comma-separated header list, honouring quotes and angle brackets (a
/// display name or URI may contain commas).
fn first_list_item(v: &str) -> &str {
    match list_comma(v) {
        Some(i) => v.get(..i).unwrap_or(v),
        None => v,
    }
}

/// The elements of a comma-separated header list (`Via`, `Record-Route`, `Contact`), as
/// [`first_list_item`] splits them, trimmed, empty ones skipped.
pub(crate) fn list_items(v: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(v);
    std::iter::from_fn(move || loop {
        let r = rest?;
        let (item, next) = match list_comma(r) {
            Some(i) => (r.get(..i).unwrap_or(""), r.get(i + 1..)),
            None => (r, None),
        };
        rest = next;
        let item = item.trim();
        if !item.is_empty() {
            return Some(item);
        }
    })
}

/// Index of the first comma of `v` outside quotes and angle brackets.
fn list_comma(v: &str) -> Option<usize> {
    let mut quoted = false;
    let mut angle = false;
    let mut escaped = false;
    for (i, c) in v.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => return Some(i),
            _ => {}
        }
    }
    None
}

/// A From/To/Contact value: optional display name, the URI, and the parts a recorder files
/// calls under (user and host of the URI, the dialog tag).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameAddr {
    pub display: Option<String>,
    /// The URI as written, without angle brackets.
    pub uri: String,
    /// User part of a sip/sips URI, or the number of a tel URI.
    pub user: Option<String>,
    /// Host of a sip/sips URI; IPv6 literals are given without their brackets.
    pub host: Option<String>,
    /// The `tag` header parameter.
    pub tag: Option<String>,
}

impl NameAddr {
    /// Parses `"Alice" <sip:alice@host;transport=tcp>;tag=x`, `Bob <tel:+1555>`, or the bare
    /// `sip:bob@host;tag=x` form, where everything after the first `;` is a header parameter.
    /// Returns `None` when there is no URI at all.
    pub fn parse(value: &str) -> Option<NameAddr> {
        let (display, uri, params) = split_name_addr(value)?;
        let (user, host) = uri_parts(uri);
        Some(NameAddr {
            display: display.map(|(d, quoted)| if quoted { unescape(d) } else { d.to_string() }),
            uri: uri.to_string(),
            user: user.map(str::to_string),
            host: host.map(str::to_string),
            tag: param(params, "tag").map(str::to_string),
        })
    }
}

/// The host of a name-addr's sip/sips URI, as [`NameAddr::parse`] finds it, without allocating
/// (the tracker reads every Contact and Record-Route of a dialog's messages).
pub(crate) fn name_addr_host(value: &str) -> Option<&str> {
    let (_, uri, _) = split_name_addr(value)?;
    uri_parts(uri).1
}

/// A name-addr's display name (and whether it was quoted, so still escaped), URI and header
/// parameters, as written; `None` when there is no URI at all.
type RawNameAddr<'a> = (Option<(&'a str, bool)>, &'a str, &'a str);

fn split_name_addr(value: &str) -> Option<RawNameAddr<'_>> {
    let v = value.trim();
    let (display, uri, params) = if let Some(rest) = v.strip_prefix('"') {
        let end = closing_quote(rest)?;
        let display = rest.get(..end)?;
        let after = rest.get(end + 1..)?.trim_start();
        let inner = after.strip_prefix('<')?;
        let close = inner.find('>')?;
        (
            Some((display, true)),
            inner.get(..close)?,
            inner.get(close + 1..).unwrap_or(""),
        )
    } else if let Some(open) = v.find('<') {
        let display = v.get(..open)?.trim();
        let inner = v.get(open + 1..)?;
        let close = inner.find('>')?;
        (
            (!display.is_empty()).then_some((display, false)),
            inner.get(..close)?,
            inner.get(close + 1..).unwrap_or(""),
        )
    } else {
        match v.find(';') {
            Some(semi) => (None, v.get(..semi)?, v.get(semi..).unwrap_or("")),
            None => (None, v, ""),
        }
    };
    let uri = uri.trim();
    (!uri.is_empty()).then_some((display, uri, params))
}

/// Index of the closing quote of a quoted-string body (after the opening quote).
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return Some(i);
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if !escaped && c == '\\' {
            escaped = true;
            continue;
        }
        escaped = false;
        out.push(c);
    }
    out
}

/// Value of parameter `name` in a `;a=b;c` list (a valueless parameter yields `""`).
pub(crate) fn param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    params.split(';').find_map(|p| {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, v),
            None => (p, ""),
        };
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// User and host of a sip/sips/tel URI.
fn uri_parts(uri: &str) -> (Option<&str>, Option<&str>) {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return (None, None);
    };
    if scheme.eq_ignore_ascii_case("tel") {
        let number = rest.split(';').next().unwrap_or("").trim();
        return ((!number.is_empty()).then_some(number), None);
    }
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return (None, None);
    }
    // URI headers (`?...`) never hold the host; the userinfo ends at the last '@' before them.
    let rest = rest.split('?').next().unwrap_or(rest);
    let (userinfo, hostport) = match rest.rfind('@') {
        Some(at) => (rest.get(..at), rest.get(at + 1..).unwrap_or("")),
        None => (None, rest),
    };
    let user = userinfo
        .map(|u| u.split(':').next().unwrap_or(u))
        .filter(|u| !u.is_empty());
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.find(']').and_then(|end| v6.get(..end))
    } else {
        hostport.split([':', ';']).next()
    };
    (user, host.filter(|h| !h.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_quoted_ipv6() {
        let n = NameAddr::parse(
            r#""Alice \"A\" Smith" <sip:alice@[2001:db8::1]:5060;transport=tcp>;tag=abc"#,
        )
        .expect("parses");
        assert_eq!(n.display.as_deref(), Some("Alice \"A\" Smith"));
        assert_eq!(n.uri, "sip:alice@[2001:db8::1]:5060;transport=tcp");
        assert_eq!(n.user.as_deref(), Some("alice"));
        assert_eq!(n.host.as_deref(), Some("2001:db8::1"));
        assert_eq!(n.tag.as_deref(), Some("abc"));
    }

    #[test]
    fn name_addr_bare_params_are_header_params() {
        let n = NameAddr::parse("sip:bob@example.com;tag=x").expect("parses");
        assert_eq!(n.uri, "sip:bob@example.com");
        assert_eq!(n.host.as_deref(), Some("example.com"));
        assert_eq!(n.tag.as_deref(), Some("x"));
        assert_eq!(n.display, None);
    }

    #[test]
    fn name_addr_tel_and_unquoted_display() {
        let n = NameAddr::parse("Bob Jones <tel:+15551234;phone-context=x>").expect("parses");
        assert_eq!(n.display.as_deref(), Some("Bob Jones"));
        assert_eq!(n.user.as_deref(), Some("+15551234"));
        assert_eq!(n.host, None);
        assert_eq!(n.tag, None);
        let n = NameAddr::parse("<tel:+15551234>").expect("parses");
        assert_eq!(n.uri, "tel:+15551234");
    }

    #[test]
    fn name_addr_garbage() {
        assert_eq!(NameAddr::parse(""), None);
        assert_eq!(NameAddr::parse("\"unterminated <sip:a@b>"), None);
        assert_eq!(NameAddr::parse("<>"), None);
        assert_eq!(NameAddr::parse("<sip:a@b"), None);
        let n = NameAddr::parse("sip:@").expect("parses");
        assert_eq!((n.user, n.host), (None, None));
    }

    #[test]
    fn list_items_split_at_top_level_commas() {
        let items: Vec<&str> =
            list_items(r#" "a, b" <sip:x@y>, <sip:z@w;lr> ,, SIP/2.0/UDP 10.0.0.1"#).collect();
        assert_eq!(
            items,
            [
                r#""a, b" <sip:x@y>"#,
                "<sip:z@w;lr>",
                "SIP/2.0/UDP 10.0.0.1"
            ]
        );
        assert_eq!(list_items("").count(), 0);
    }

    #[test]
    fn first_list_item_respects_quotes() {
        assert_eq!(
            first_list_item(r#""a, b" <sip:x@y>, <sip:z@w>"#),
            r#""a, b" <sip:x@y>"#
        );
    }
}
