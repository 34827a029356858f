//! The `baggage` header, W3C Baggage (<https://www.w3.org/TR/baggage/>).
//!
//! Members are kept as the caller wrote them (surrounding whitespace trimmed), so a header
//! the filter adds to still carries every caller member byte for byte and in order.

use std::borrow::Cow;

use super::traceparent::lower_hex_value;
use super::{is_ows, trim_ows};
use crate::header_value::{is_token, push_percent_encoded, starts_with_ignore_case};

/// The most list-members the filter writes into one `baggage` header.
pub const MAX_MEMBERS: usize = 64;
/// The most bytes the filter writes into one `baggage` header.
pub const MAX_BYTES: usize = 8192;

/// Where one list-member is in the header text: the member, its key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    start: usize,
    key_end: usize,
    value_start: usize,
    value_end: usize,
}

/// A valid `baggage` header, kept as the text the filter writes (its members, trimmed,
/// joined by `,`) with the position of each member, so that reading, appending and
/// writing it allocate once, not once per member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    text: String,
    members: Vec<Member>,
}

/// Why a `baggage` header was refused, or why a member was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaggageError {
    MissingEquals,
    InvalidKey,
    InvalidValue,
    InvalidProperty,
    KeyExists,
    TooManyMembers,
    TooLarge,
}

impl BaggageError {
    /// A short reason for log lines.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MissingEquals => "a list-member has no '='",
            Self::InvalidKey => "a key is not a token",
            Self::InvalidValue => "a value has a character outside baggage-octet",
            Self::InvalidProperty => "a property is not 'key' or 'key=value'",
            Self::KeyExists => "the key is already present",
            Self::TooManyMembers => "the header would hold more than 64 members",
            Self::TooLarge => "the header would be larger than 8192 bytes",
        }
    }
}

/// `baggage-octet`: printable ASCII except space, `"`, `,`, `;` and `\`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

fn is_baggage_value(value: &str) -> bool {
    value.bytes().all(is_baggage_octet)
}

/// `property = key OWS "=" OWS value / key OWS` (the caller trims the outer OWS).
fn is_property(property: &str) -> bool {
    match property.split_once('=') {
        None => is_token(property),
        Some((key, value)) => is_token(trim_ows(key)) && is_baggage_value(trim_ows(value)),
    }
}

/// `list-member = key OWS "=" OWS value *( OWS ";" OWS property )`, with the member's
/// surrounding OWS already trimmed (so the key starts at offset 0); the member's offsets
/// are relative to its own text.
fn parse_member(text: &str) -> Result<Member, BaggageError> {
    let mut parts = text.split(';');
    let key_value = parts.next().unwrap_or_default();
    let (raw_key, raw_value) = key_value
        .split_once('=')
        .ok_or(BaggageError::MissingEquals)?;
    let key = trim_ows(raw_key);
    if !is_token(key) {
        return Err(BaggageError::InvalidKey);
    }
    let value = trim_ows(raw_value);
    if !is_baggage_value(value) {
        return Err(BaggageError::InvalidValue);
    }
    if !parts.all(|p| is_property(trim_ows(p))) {
        return Err(BaggageError::InvalidProperty);
    }
    let leading_ows = raw_value.len() - raw_value.trim_start_matches(is_ows).len();
    let value_start = raw_key.len() + 1 + leading_ows;
    Ok(Member {
        start: 0,
        key_end: key.len(),
        value_start,
        value_end: value_start + value.len(),
    })
}

/// Decodes `%XY` escapes (either case); a `%` not followed by two hex digits stays as it is.
/// Escapes that are not UTF-8 become U+FFFD, as the spec requires.
fn percent_decode(raw: &str) -> String {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            if let [hi, lo, after @ ..] = tail {
                let digits = (
                    lower_hex_value(hi.to_ascii_lowercase()),
                    lower_hex_value(lo.to_ascii_lowercase()),
                );
                if let (Some(hi), Some(lo)) = digits {
                    bytes.push((hi << 4) | lo);
                    rest = after;
                    continue;
                }
            }
        }
        bytes.push(first);
        rest = tail;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Percent-encodes every byte that is not a `baggage-octet`, and `%` itself; runs of
/// plain bytes are copied whole.
fn percent_encode(value: &str, out: &mut String) {
    let plain = |b: u8| is_baggage_octet(b) && b != b'%';
    let bytes = value.as_bytes();
    let mut run_start = 0;
    for (at, &b) in bytes.iter().enumerate() {
        if plain(b) {
            continue;
        }
        // A run is ASCII and ends before this byte, so both ends are character boundaries.
        out.push_str(value.get(run_start..at).unwrap_or_default());
        push_percent_encoded(out, b);
        run_start = at + 1;
    }
    out.push_str(value.get(run_start..).unwrap_or_default());
}

/// The `baggage` value without the list-members whose key starts with `prefix` (ASCII
/// case-insensitively), and how many were removed. Works on any value, valid or not: no key
/// or value may contain `,`, so the members kept are kept byte for byte (trimmed, empty
/// ones dropped). A value with nothing to remove or trim is returned as it is.
pub fn strip_members<'a>(value: &'a str, prefix: &str) -> (Cow<'a, str>, usize) {
    let removable = |member: &str| {
        let key = trim_ows(member.split(['=', ';']).next().unwrap_or_default());
        starts_with_ignore_case(key, prefix)
    };
    let untouched = value
        .split(',')
        .all(|m| !m.is_empty() && trim_ows(m).len() == m.len() && !removable(m));
    if untouched || value.is_empty() {
        return (Cow::Borrowed(value), 0);
    }
    let mut kept = String::with_capacity(value.len());
    let mut removed = 0;
    for member in value.split(',') {
        if removable(member) {
            removed += 1;
            continue;
        }
        if trim_ows(member).is_empty() {
            continue;
        }
        if !kept.is_empty() {
            kept.push(',');
        }
        kept.push_str(trim_ows(member));
    }
    (Cow::Owned(kept), removed)
}

impl Baggage {
    /// Parses a `baggage` value; several `baggage` headers joined with `,` are one value.
    /// Empty and whitespace-only members are dropped (an empty header among several leaves
    /// one). Any malformed member makes the whole header invalid. A header beyond 64
    /// members or 8192 bytes still parses: it is passed on whole, only `append` refuses.
    pub fn parse(value: &str) -> Result<Baggage, BaggageError> {
        let mut baggage = Baggage {
            text: String::with_capacity(value.len()),
            members: Vec::new(),
        };
        for text in value.split(',').map(trim_ows).filter(|m| !m.is_empty()) {
            let member = parse_member(text)?;
            baggage.push(text, member);
        }
        Ok(baggage)
    }

    /// Adds a member (offsets relative to `text`) after the others.
    fn push(&mut self, text: &str, member: Member) {
        if !self.text.is_empty() {
            self.text.push(',');
        }
        let start = self.text.len();
        self.text.push_str(text);
        self.members.push(Member {
            start,
            key_end: start + member.key_end,
            value_start: start + member.value_start,
            value_end: start + member.value_end,
        });
    }

    fn key(&self, m: &Member) -> &str {
        self.text.get(m.start..m.key_end).unwrap_or_default()
    }

    /// The percent-decoded value of the first member with `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.members.iter().find(|m| self.key(m) == key).map(|m| {
            percent_decode(
                self.text
                    .get(m.value_start..m.value_end)
                    .unwrap_or_default(),
            )
        })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Length in bytes of `as_header()`.
    pub fn header_len(&self) -> usize {
        self.text.len()
    }

    /// Adds `key=value` (the value percent-encoded) after the existing members. Refused,
    /// leaving the baggage as it was, when `key` is not a token, is already present, or
    /// the header would then exceed 64 members or 8192 bytes.
    pub fn append(&mut self, key: &str, value: &str) -> Result<(), BaggageError> {
        if !is_token(key) {
            return Err(BaggageError::InvalidKey);
        }
        if self.members.iter().any(|m| self.key(m) == key) {
            return Err(BaggageError::KeyExists);
        }
        if self.members.len() >= MAX_MEMBERS {
            return Err(BaggageError::TooManyMembers);
        }
        let before = self.text.len();
        let separator = usize::from(!self.members.is_empty());
        if separator == 1 {
            self.text.push(',');
        }
        let start = self.text.len();
        self.text.push_str(key);
        self.text.push('=');
        percent_encode(value, &mut self.text);
        if self.text.len() > MAX_BYTES {
            self.text.truncate(before);
            return Err(BaggageError::TooLarge);
        }
        self.members.push(Member {
            start,
            key_end: start + key.len(),
            value_start: start + key.len() + 1,
            value_end: self.text.len(),
        });
        Ok(())
    }

    /// The header value: the members joined by `,`.
    pub fn as_header(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn members(n: usize) -> String {
        (0..n)
            .map(|i| format!("k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn parses_the_spec_example_keeping_members_byte_identical() {
        let value = "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue";
        let b = Baggage::parse(value).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.get("key1").as_deref(), Some("value1"));
        assert_eq!(b.get("key2").as_deref(), Some("value2"));
        assert_eq!(b.get("key3").as_deref(), Some("value3"));
        assert_eq!(
            b.as_header(),
            "key1=value1;property1;property2,key2 = value2,key3=value3; propertyKey=propertyValue"
        );
        assert_eq!(b.header_len(), b.as_header().len());
    }

    #[test]
    fn ows_around_keys_values_and_members_is_trimmed() {
        let b = Baggage::parse("\t userId =   alice \t,serverNode\t=\tDF%2028 ").unwrap();
        assert_eq!(b.get("userId").as_deref(), Some("alice"));
        assert_eq!(b.get("serverNode").as_deref(), Some("DF 28"));
        assert_eq!(b.as_header(), "userId =   alice,serverNode\t=\tDF%2028");
    }

    #[test]
    fn empty_members_and_empty_headers_are_dropped() {
        for value in ["", " ", ",", " ,\t, "] {
            let b = Baggage::parse(value).unwrap();
            assert!(b.is_empty(), "{value:?}");
            assert_eq!(b.as_header(), "");
            assert_eq!(b.header_len(), 0);
        }
        assert_eq!(Baggage::parse("a=1,,b=2,").unwrap().as_header(), "a=1,b=2");
    }

    #[test]
    fn several_headers_joined_with_a_comma_parse_as_one() {
        let joined = ["userId=alice", "", "serverNode=DF%2028,isProduction=false"].join(",");
        let b = Baggage::parse(&joined).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.get("isProduction").as_deref(), Some("false"));
        assert_eq!(
            b.as_header(),
            "userId=alice,serverNode=DF%2028,isProduction=false"
        );
    }

    #[test]
    fn values_may_be_empty_or_contain_equals_signs() {
        let b = Baggage::parse("empty=,eq=a=b==").unwrap();
        assert_eq!(b.get("empty").as_deref(), Some(""));
        assert_eq!(b.get("eq").as_deref(), Some("a=b=="));
    }

    #[test]
    fn properties_are_validated_and_preserved() {
        let value = "k=v;p1;p2=x;p3 = y ; p4 ";
        let b = Baggage::parse(value).unwrap();
        assert_eq!(b.get("k").as_deref(), Some("v"));
        assert_eq!(b.as_header(), "k=v;p1;p2=x;p3 = y ; p4");
        for bad in [
            "k=v;",
            "k=v;;p",
            "k=v;bad key",
            "k=v;p=a b",
            "k=v;=x",
            "k=v;p=\"q\"",
        ] {
            assert_eq!(
                Baggage::parse(bad),
                Err(BaggageError::InvalidProperty),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn invalid_members_invalidate_the_header() {
        assert_eq!(
            Baggage::parse("a=1,novalue"),
            Err(BaggageError::MissingEquals)
        );
        assert_eq!(Baggage::parse("=v"), Err(BaggageError::InvalidKey));
        assert_eq!(Baggage::parse("bad key=v"), Err(BaggageError::InvalidKey));
        assert_eq!(Baggage::parse("k(1)=v"), Err(BaggageError::InvalidKey));
        assert_eq!(Baggage::parse("ké=v"), Err(BaggageError::InvalidKey));
        for bad in [
            "k=a b", "k=\"q\"", "k=a\\b", "k=é", "k=a\tb", "k=\u{7f}", "k=a\r\nx",
        ] {
            assert_eq!(
                Baggage::parse(bad),
                Err(BaggageError::InvalidValue),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_baggage_octet_is_a_valid_value_character() {
        let octets: String = (0x21u8..=0x7e)
            .filter(|b| !matches!(b, b'"' | b',' | b';' | b'\\'))
            .map(char::from)
            .collect();
        assert_eq!(octets.len(), 94 - 4);
        let b = Baggage::parse(&format!("k={octets}")).unwrap();
        assert_eq!(b.as_header(), format!("k={octets}"));
    }

    #[test]
    fn get_percent_decodes_and_returns_the_first_occurrence() {
        let b = Baggage::parse("k=Z%C3%BCrich,k=second,lower=%c3%bc,pct=100%25").unwrap();
        assert_eq!(b.get("k").as_deref(), Some("Zürich"));
        assert_eq!(b.get("lower").as_deref(), Some("ü"));
        assert_eq!(b.get("pct").as_deref(), Some("100%"));
        assert_eq!(b.get("K"), None);
        assert_eq!(
            b.as_header(),
            "k=Z%C3%BCrich,k=second,lower=%c3%bc,pct=100%25"
        );
    }

    #[test]
    fn stray_percent_signs_stay_and_bad_utf8_becomes_replacement_characters() {
        let b = Baggage::parse("a=50%,b=%zz,c=%4,d=%FF,e=%C3").unwrap();
        assert_eq!(b.get("a").as_deref(), Some("50%"));
        assert_eq!(b.get("b").as_deref(), Some("%zz"));
        assert_eq!(b.get("c").as_deref(), Some("%4"));
        assert_eq!(b.get("d").as_deref(), Some("\u{fffd}"));
        assert_eq!(b.get("e").as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn percent_encoding_round_trips_any_text() {
        let samples = [
            "plain",
            "with space",
            "100%",
            "a,b;c\\d\"e",
            "Zürich 東京 \u{1F680}",
            "ctl\r\n\t\0\u{7f}",
            "=%=%25",
            "",
        ];
        for value in samples {
            let mut b = Baggage::default();
            b.append("k", value).unwrap();
            let header = b.as_header().to_string();
            let reparsed = Baggage::parse(&header).unwrap();
            assert_eq!(reparsed.get("k").as_deref(), Some(value), "{header}");
            assert_eq!(b.get("k").as_deref(), Some(value));
        }
        let mut b = Baggage::default();
        b.append("k", "a b,c;d%é").unwrap();
        assert_eq!(b.as_header(), "k=a%20b%2Cc%3Bd%25%C3%A9");
    }

    #[test]
    fn append_keeps_the_callers_members_byte_identical_and_in_order() {
        let caller = "z=1;prop, a = 2 ,m=%E2%9C%93;x=y";
        let mut b = Baggage::parse(caller).unwrap();
        b.append("consul.service", "echo").unwrap();
        b.append("consul.service.meta.version", "1.4.2").unwrap();
        assert_eq!(
            b.as_header(),
            "z=1;prop,a = 2,m=%E2%9C%93;x=y,consul.service=echo,consul.service.meta.version=1.4.2"
        );
        assert_eq!(b.get("consul.service").as_deref(), Some("echo"));
    }

    #[test]
    fn append_to_empty_baggage_has_no_leading_comma() {
        let mut b = Baggage::parse("").unwrap();
        b.append("consul.service", "echo").unwrap();
        assert_eq!(b.as_header(), "consul.service=echo");
    }

    #[test]
    fn append_leaves_an_existing_key_to_the_caller() {
        let mut b = Baggage::parse("consul.service = theirs").unwrap();
        assert_eq!(
            b.append("consul.service", "ours"),
            Err(BaggageError::KeyExists)
        );
        assert_eq!(b.as_header(), "consul.service = theirs");
        assert_eq!(b.get("consul.service").as_deref(), Some("theirs"));
    }

    #[test]
    fn append_refuses_a_key_that_is_not_a_token() {
        let mut b = Baggage::default();
        for bad in ["", "a b", "a=b", "a;b", "é"] {
            assert_eq!(b.append(bad, "v"), Err(BaggageError::InvalidKey), "{bad:?}");
        }
        assert!(b.is_empty());
    }

    #[test]
    fn append_stops_at_64_members() {
        let mut b = Baggage::parse(&members(63)).unwrap();
        b.append("last", "v").unwrap();
        assert_eq!(b.len(), 64);
        let before = b.as_header().to_string();
        assert_eq!(b.append("one.more", "v"), Err(BaggageError::TooManyMembers));
        assert_eq!(b.as_header(), before);
    }

    #[test]
    fn a_caller_header_beyond_the_limits_passes_whole_and_gets_nothing_added() {
        let many = members(100);
        let mut b = Baggage::parse(&many).unwrap();
        assert_eq!(b.len(), 100);
        assert_eq!(
            b.append("consul.service", "echo"),
            Err(BaggageError::TooManyMembers)
        );
        assert_eq!(b.as_header(), many);

        let big = format!("big={}", "x".repeat(9000));
        let mut b = Baggage::parse(&big).unwrap();
        assert_eq!(
            b.append("consul.service", "echo"),
            Err(BaggageError::TooLarge)
        );
        assert_eq!(b.as_header(), big);
    }

    #[test]
    fn append_stops_at_8192_bytes_exactly() {
        // "fill=" + n bytes, then "," + "k=v" (3 bytes): fits when 5 + n + 4 <= 8192.
        let n = MAX_BYTES - 5 - 4;
        let mut b = Baggage::parse(&format!("fill={}", "x".repeat(n))).unwrap();
        b.append("k", "v").unwrap();
        assert_eq!(b.header_len(), MAX_BYTES);
        assert_eq!(b.as_header().len(), MAX_BYTES);

        let mut b = Baggage::parse(&format!("fill={}", "x".repeat(n + 1))).unwrap();
        assert_eq!(b.append("k", "v"), Err(BaggageError::TooLarge));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn the_size_limit_counts_the_encoded_value() {
        // 2728 "é" are 5456 UTF-8 bytes, 16368 when encoded: too large although the text is not.
        let mut b = Baggage::default();
        assert_eq!(
            b.append("k", &"é".repeat(2728)),
            Err(BaggageError::TooLarge)
        );
        b.append("k", &"é".repeat(1364)).unwrap();
        assert_eq!(b.header_len(), 2 + 1364 * 6);
    }

    #[test]
    fn every_error_has_a_reason() {
        let all = [
            BaggageError::MissingEquals,
            BaggageError::InvalidKey,
            BaggageError::InvalidValue,
            BaggageError::InvalidProperty,
            BaggageError::KeyExists,
            BaggageError::TooManyMembers,
            BaggageError::TooLarge,
        ];
        let reasons: std::collections::BTreeSet<&str> = all.iter().map(|e| e.as_str()).collect();
        assert_eq!(reasons.len(), all.len());
    }

    #[test]
    fn strip_members_removes_a_namespace_from_any_value() {
        let (kept, n) = strip_members(
            "ui.component=form,consul.service=admin, Consul.Service.Meta.version=evil;p,x=1",
            "consul.",
        );
        assert_eq!((&*kept, n), ("ui.component=form,x=1", 2));
        let (kept, n) = strip_members("bad member,consul.x=1,,y=2", "consul.");
        assert_eq!((&*kept, n), ("bad member,y=2", 1));
        let (kept, n) = strip_members(" a=1 ,, b=2", "consul.");
        assert_eq!((&*kept, n), ("a=1,b=2", 0));
        for untouched in ["", "consulx=1", "a=1,b=2;p"] {
            let (kept, n) = strip_members(untouched, "consul.");
            assert!(
                matches!(kept, Cow::Borrowed(v) if v == untouched),
                "{untouched:?}"
            );
            assert_eq!(n, 0);
        }
    }

    #[test]
    fn non_ascii_round_trips_through_one_encoding() {
        let mut b = Baggage::default();
        b.append("consul.service.meta.region", "Zürich 100%")
            .unwrap();
        assert_eq!(
            b.as_header(),
            "consul.service.meta.region=Z%C3%BCrich%20100%25"
        );
        let parsed = Baggage::parse(b.as_header()).unwrap();
        assert_eq!(
            parsed.get("consul.service.meta.region").as_deref(),
            Some("Zürich 100%")
        );
    }
}
