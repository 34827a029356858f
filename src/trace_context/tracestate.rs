//! The `tracestate` header, W3C Trace Context Level 1
//! (<https://www.w3.org/TR/trace-context/#tracestate-header>).

use super::trim_ows;

/// Most list-members a `tracestate` may hold.
pub const MAX_MEMBERS: usize = 32;
/// Longest simple key, tenant id, system id and value.
const MAX_SIMPLE_KEY_LEN: usize = 256;
const MAX_TENANT_ID_LEN: usize = 241;
const MAX_SYSTEM_ID_LEN: usize = 14;
const MAX_VALUE_LEN: usize = 256;

/// A valid `tracestate`: its list-members, left-most first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceState {
    members: Vec<(String, String)>,
}

/// Why a `tracestate` (or a member to set) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceStateError {
    MissingEquals,
    InvalidKey,
    InvalidValue,
    DuplicateKey,
    TooManyMembers,
}

impl TraceStateError {
    /// A short reason for log lines.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MissingEquals => "a list-member has no '='",
            Self::InvalidKey => "a key is not a simple or multi-tenant key (lower case, digits, _-*/, one '@')",
            Self::InvalidValue => "a value is not 1-256 printable ASCII characters without ',' '=' or a trailing space",
            Self::DuplicateKey => "a key appears twice",
            Self::TooManyMembers => "more than 32 list-members",
        }
    }
}

/// The characters allowed after the first one of a key part.
fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// One part of a key: `first` then up to `max_len - 1` key characters.
fn is_key_part(part: &str, max_len: usize, first: fn(&u8) -> bool) -> bool {
    let bytes = part.as_bytes();
    bytes.len() <= max_len
        && bytes.first().is_some_and(first)
        && bytes.iter().all(|&b| is_key_char(b))
}

fn is_lower_alpha_or_digit(b: &u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// True when `key` is a `simple-key` (`lcalpha 0*255(...)`) or a `multi-tenant-key`
/// (`tenant-id "@" system-id`, tenant up to 241 characters starting with a letter or digit,
/// system up to 14 starting with a letter).
pub fn is_valid_key(key: &str) -> bool {
    match key.split_once('@') {
        None => is_key_part(key, MAX_SIMPLE_KEY_LEN, u8::is_ascii_lowercase),
        Some((tenant, system)) => {
            is_key_part(tenant, MAX_TENANT_ID_LEN, is_lower_alpha_or_digit)
                && is_key_part(system, MAX_SYSTEM_ID_LEN, u8::is_ascii_lowercase)
        }
    }
}

/// `nblk-chr`: printable ASCII except space, `,` and `=`.
fn is_non_blank_value_char(b: u8) -> bool {
    matches!(b, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e)
}

/// True when `value` is `0*255(chr) nblk-chr`: 1 to 256 printable ASCII characters, no
/// `,` or `=`, spaces allowed except at the end.
pub fn is_valid_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() <= MAX_VALUE_LEN
        && bytes.last().is_some_and(|&b| is_non_blank_value_char(b))
        && bytes
            .iter()
            .all(|&b| b == b' ' || is_non_blank_value_char(b))
}

impl TraceState {
    /// Parses a `tracestate` value; several `tracestate` headers joined with `,` are one
    /// value. Empty and whitespace-only members are allowed and dropped. Any invalid member,
    /// a repeated key or more than 32 members makes the whole header invalid.
    pub fn parse(value: &str) -> Result<TraceState, TraceStateError> {
        let mut members: Vec<(String, String)> = Vec::new();
        for raw in value.split(',') {
            let member = trim_ows(raw);
            if member.is_empty() {
                continue;
            }
            let (key, value) = member
                .split_once('=')
                .ok_or(TraceStateError::MissingEquals)?;
            if !is_valid_key(key) {
                return Err(TraceStateError::InvalidKey);
            }
            if !is_valid_value(value) {
                return Err(TraceStateError::InvalidValue);
            }
            if members.iter().any(|(k, _)| k == key) {
                return Err(TraceStateError::DuplicateKey);
            }
            if members.len() == MAX_MEMBERS {
                return Err(TraceStateError::TooManyMembers);
            }
            members.push((key.to_string(), value.to_string()));
        }
        Ok(TraceState { members })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Adds or updates `key`; either way it becomes the left-most member, as the spec asks.
    /// When that makes 33 members, the right-most one is dropped.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), TraceStateError> {
        if !is_valid_key(key) {
            return Err(TraceStateError::InvalidKey);
        }
        if !is_valid_value(value) {
            return Err(TraceStateError::InvalidValue);
        }
        self.members.retain(|(k, _)| k != key);
        self.members.insert(0, (key.to_string(), value.to_string()));
        self.members.truncate(MAX_MEMBERS);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The header value: members joined by `,`, without optional whitespace.
    pub fn to_header(&self) -> String {
        let capacity = self
            .members
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum();
        let mut out = String::with_capacity(capacity);
        for (key, value) in &self.members {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(key);
            out.push('=');
            out.push_str(value);
        }
        out
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
    fn parses_the_spec_examples() {
        let ts = TraceState::parse("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
        assert_eq!(ts.len(), 2);
        assert_eq!(ts.get("rojo"), Some("00f067aa0ba902b7"));
        assert_eq!(ts.get("congo"), Some("t61rcWkgMzE"));
        assert_eq!(ts.get("absent"), None);
        assert_eq!(ts.to_header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    }

    #[test]
    fn empty_and_whitespace_members_are_allowed_and_dropped() {
        for value in ["", " ", "\t", ",", " , ,\t,"] {
            let ts = TraceState::parse(value).unwrap();
            assert!(ts.is_empty(), "{value:?}");
            assert_eq!(ts.to_header(), "");
        }
        let ts = TraceState::parse(" a=1 ,\t, ,b=2\t,").unwrap();
        assert_eq!(ts.to_header(), "a=1,b=2");
    }

    #[test]
    fn joined_headers_parse_as_one_list() {
        let joined = ["a=1,b=2", "", "c=3"].join(",");
        assert_eq!(
            TraceState::parse(&joined).unwrap().to_header(),
            "a=1,b=2,c=3"
        );
    }

    #[test]
    fn member_without_equals_is_invalid() {
        assert_eq!(
            TraceState::parse("a=1,b"),
            Err(TraceStateError::MissingEquals)
        );
        assert_eq!(
            TraceState::parse("novalue"),
            Err(TraceStateError::MissingEquals)
        );
    }

    #[test]
    fn simple_keys() {
        assert!(is_valid_key("a"));
        assert!(is_valid_key("a-b_c*d/e0"));
        assert!(is_valid_key(&format!("a{}", "z".repeat(255))));
        assert!(!is_valid_key(&format!("a{}", "z".repeat(256))));
        for bad in [
            "", "0abc", "_a", "*a", "Abc", "aBc", "a.b", "a b", "a=b", "é", "a,b",
        ] {
            assert!(!is_valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn multi_tenant_keys() {
        assert!(is_valid_key("tenant@system"));
        assert!(is_valid_key("0tenant@s"));
        assert!(is_valid_key("fw529a3039@dt"));
        assert!(is_valid_key(&format!(
            "{}@{}",
            "t".repeat(241),
            "s".repeat(14)
        )));
        assert!(!is_valid_key(&format!("{}@s", "t".repeat(242))));
        assert!(!is_valid_key(&format!("t@{}", "s".repeat(15))));
        for bad in [
            "@system", "tenant@", "@", "t@0sys", "t@_s", "_t@s", "a@b@c", "T@s", "t@S",
        ] {
            assert!(!is_valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn values() {
        assert!(is_valid_value("x"));
        assert!(is_valid_value("a b"));
        assert!(is_valid_value(" leading"));
        assert!(is_valid_value(
            "!\"#$%&'()*+-./0123456789:;<>?@AZ[\\]^_`az{|}~"
        ));
        assert!(is_valid_value(&"v".repeat(256)));
        assert!(!is_valid_value(&"v".repeat(257)));
        for bad in [
            "",
            " ",
            "trailing ",
            "a,b",
            "a=b",
            "tab\there",
            "\u{7f}",
            "é",
            "nul\0",
        ] {
            assert!(!is_valid_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn invalid_key_or_value_invalidates_the_header() {
        assert_eq!(
            TraceState::parse("a=1,Bad=2"),
            Err(TraceStateError::InvalidKey)
        );
        assert_eq!(
            TraceState::parse("a=1,b=x=y"),
            Err(TraceStateError::InvalidValue)
        );
        assert_eq!(TraceState::parse("a="), Err(TraceStateError::InvalidValue));
        assert_eq!(TraceState::parse("a =1"), Err(TraceStateError::InvalidKey));
        assert_eq!(
            TraceState::parse("a=\u{1}"),
            Err(TraceStateError::InvalidValue)
        );
    }

    #[test]
    fn spaces_inside_a_value_are_kept() {
        let ts = TraceState::parse("a= one two ").unwrap();
        assert_eq!(ts.get("a"), Some(" one two"));
        assert_eq!(ts.to_header(), "a= one two");
    }

    #[test]
    fn duplicate_keys_are_invalid() {
        assert_eq!(
            TraceState::parse("a=1,b=2,a=3"),
            Err(TraceStateError::DuplicateKey)
        );
        assert_eq!(
            TraceState::parse("t@s=1,t@s=1"),
            Err(TraceStateError::DuplicateKey)
        );
    }

    #[test]
    fn at_most_32_members() {
        assert_eq!(TraceState::parse(&members(32)).unwrap().len(), 32);
        let with_empties = format!("{},,,", members(32));
        assert_eq!(TraceState::parse(&with_empties).unwrap().len(), 32);
        assert_eq!(
            TraceState::parse(&members(33)),
            Err(TraceStateError::TooManyMembers)
        );
    }

    #[test]
    fn set_adds_a_new_key_left_most() {
        let mut ts = TraceState::parse("rojo=1,congo=2").unwrap();
        ts.set("consul", "v1").unwrap();
        assert_eq!(ts.to_header(), "consul=v1,rojo=1,congo=2");
    }

    #[test]
    fn set_moves_an_updated_key_left_most_and_keeps_the_others_in_order() {
        let mut ts = TraceState::parse("a=1,b=2,c=3").unwrap();
        ts.set("b", "22").unwrap();
        assert_eq!(ts.to_header(), "b=22,a=1,c=3");
        ts.set("c", "3").unwrap();
        assert_eq!(ts.to_header(), "c=3,b=22,a=1");
        assert_eq!(ts.len(), 3);
    }

    #[test]
    fn set_on_a_full_list_drops_the_right_most_member() {
        let mut ts = TraceState::parse(&members(32)).unwrap();
        ts.set("new", "x").unwrap();
        assert_eq!(ts.len(), 32);
        assert_eq!(ts.get("new"), Some("x"));
        assert_eq!(ts.get("k31"), None);
        assert_eq!(ts.get("k30"), Some("v30"));
        assert!(ts.to_header().starts_with("new=x,k0=v0,"));

        let mut ts = TraceState::parse(&members(32)).unwrap();
        ts.set("k31", "updated").unwrap();
        assert_eq!(ts.len(), 32);
        assert!(ts.to_header().starts_with("k31=updated,k0=v0,"));
        assert_eq!(ts.get("k30"), Some("v30"));
    }

    #[test]
    fn set_refuses_invalid_members_and_leaves_the_list_alone() {
        let mut ts = TraceState::parse("a=1").unwrap();
        assert_eq!(ts.set("Bad", "x"), Err(TraceStateError::InvalidKey));
        assert_eq!(ts.set("a", "x,y"), Err(TraceStateError::InvalidValue));
        assert_eq!(ts.set("a", ""), Err(TraceStateError::InvalidValue));
        assert_eq!(ts.to_header(), "a=1");
    }

    #[test]
    fn round_trip_is_byte_identical_for_canonical_input() {
        let value = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7,t0@sys=a b!~,x/y*z_-=;:<>";
        assert_eq!(TraceState::parse(value).unwrap().to_header(), value);
    }

    #[test]
    fn every_error_has_a_reason() {
        let all = [
            TraceStateError::MissingEquals,
            TraceStateError::InvalidKey,
            TraceStateError::InvalidValue,
            TraceStateError::DuplicateKey,
            TraceStateError::TooManyMembers,
        ];
        let reasons: std::collections::BTreeSet<&str> = all.iter().map(|e| e.as_str()).collect();
        assert_eq!(reasons.len(), all.len());
    }
}
