//! Untrusted text (Consul names, tags, meta values) made safe for HTTP header values
//! ([`sanitize`]: printable ASCII), for baggage values and span attributes
//! ([`clean_text`]: the text itself, without control characters), and for attribute names
//! ([`attribute_key`]); and the RFC 9110 `token` check for header names and baggage keys.

use std::borrow::Cow;

/// RFC 9110 §5.6.2 `tchar`: the characters of a `token` (header names, baggage keys).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// True when `name` is an RFC 9110 `token` (`1*tchar`): usable as a header name or a
/// W3C baggage key.
pub fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_tchar)
}

/// Appends `%XY` (upper-case hex digits, RFC 3986 §2.1) for `byte`.
pub(crate) fn push_percent_encoded(out: &mut String, byte: u8) {
    const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    for nibble in [byte >> 4, byte & 0x0f] {
        if let Some(&digit) = HEX_UPPER.get(usize::from(nibble)) {
            out.push(char::from(digit));
        }
    }
}

/// Printable ASCII, space included: what a sanitised value is made of.
fn is_printable_ascii(b: u8) -> bool {
    (0x20..0x7f).contains(&b)
}

/// Makes an untrusted value safe to write into a header value, a baggage member or an
/// attribute. Returns `None` when nothing usable remains.
///
/// - Every ASCII control character (CR, LF, NUL, HTAB, the rest of 0x00–0x1F, and DEL)
///   becomes a space; a run of them becomes one space. No control character ever comes out.
/// - Every non-ASCII character is percent-encoded as its UTF-8 bytes (`Zürich` becomes
///   `Z%C3%BCrich`), so the output is printable ASCII only. A literal `%` is kept as it is,
///   so the encoding is for reading, not for exact decoding.
/// - Leading and trailing whitespace is trimmed.
/// - The output is at most `max_len` bytes, cut before the first input character that no
///   longer fits whole (a character's escapes are never split).
///
/// A value that is already clean is returned borrowed, without allocating.
pub fn sanitize(value: &str, max_len: usize) -> Option<Cow<'_, str>> {
    let trimmed = value.trim_matches(|c: char| c == ' ' || c.is_ascii_control());
    if trimmed.is_empty() || max_len == 0 {
        return None;
    }
    if trimmed.len() <= max_len && trimmed.bytes().all(is_printable_ascii) {
        return Some(Cow::Borrowed(trimmed));
    }
    let mut out = String::with_capacity(trimmed.len().min(max_len));
    let mut after_control = false;
    for c in trimmed.chars() {
        let control = c.is_ascii_control();
        if control && after_control {
            continue;
        }
        let encoded_len = if control || c.is_ascii() {
            1
        } else {
            3 * c.len_utf8()
        };
        if out.len() + encoded_len > max_len {
            break;
        }
        if control {
            out.push(' ');
        } else if c.is_ascii() {
            out.push(c);
        } else {
            let mut utf8 = [0u8; 4];
            for &byte in c.encode_utf8(&mut utf8).as_bytes() {
                push_percent_encoded(&mut out, byte);
            }
        }
        after_control = control;
    }
    let kept = out.trim_end_matches(' ').len();
    out.truncate(kept);
    if out.is_empty() {
        None
    } else {
        Some(Cow::Owned(out))
    }
}

/// Makes untrusted text safe for a span attribute value or a baggage value (which the
/// baggage writer percent-encodes once, by the W3C rules): the same text, UTF-8 kept, with
/// every run of ASCII control characters turned into one space, trimmed, and cut to at
/// most `max_len` bytes on a character boundary. `None` when nothing remains.
pub fn clean_text(value: &str, max_len: usize) -> Option<Cow<'_, str>> {
    let trimmed = value.trim_matches(|c: char| c == ' ' || c.is_ascii_control());
    if trimmed.is_empty() || max_len == 0 {
        return None;
    }
    if trimmed.len() <= max_len && !trimmed.bytes().any(|b| b.is_ascii_control()) {
        return Some(Cow::Borrowed(trimmed));
    }
    let mut out = String::with_capacity(trimmed.len().min(max_len));
    let mut after_control = false;
    for c in trimmed.chars() {
        let control = c.is_ascii_control();
        if control && after_control {
            continue;
        }
        if out.len() + c.len_utf8() > max_len {
            break;
        }
        out.push(if control { ' ' } else { c });
        after_control = control;
    }
    let kept = out.trim_end_matches(' ').len();
    out.truncate(kept);
    (!out.is_empty()).then_some(Cow::Owned(out))
}

/// Longest attribute-name suffix taken from a Consul meta key.
pub const MAX_KEY_LEN: usize = 64;

/// A Consul meta key made into part of an attribute name: ASCII letters, digits, `_`, `-`
/// and `.` are kept, every other character becomes `_`, at most [`MAX_KEY_LEN`]
/// characters. `None` for an empty key.
pub fn attribute_key(key: &str) -> Option<Cow<'_, str>> {
    let keep = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if key.is_empty() {
        return None;
    }
    if key.len() <= MAX_KEY_LEN && key.chars().all(keep) {
        return Some(Cow::Borrowed(key));
    }
    let out: String = key
        .chars()
        .take(MAX_KEY_LEN)
        .map(|c| if keep(c) { c } else { '_' })
        .collect();
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn clean(value: &str, max_len: usize) -> Option<String> {
        sanitize(value, max_len).map(Cow::into_owned)
    }

    #[test]
    fn token_accepts_every_tchar_and_nothing_else() {
        let tchars =
            "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        assert!(is_token(tchars));
        for b in 0u8..=0x7f {
            let s = char::from(b).to_string();
            assert_eq!(
                is_token(&s),
                tchars.contains(char::from(b)),
                "byte {b:#04x}"
            );
        }
        assert!(!is_token(""));
        assert!(!is_token("x-consul-é"));
        assert!(!is_token("x consul"));
        assert!(!is_token("x-consul:"));
        assert!(is_token("x-consul-meta-version"));
        assert!(is_token("ui.component"));
    }

    #[test]
    fn clean_value_is_borrowed_unchanged() {
        let v = sanitize("v1.2.3-rc1 (eu-west)", 64);
        assert!(matches!(v, Some(Cow::Borrowed("v1.2.3-rc1 (eu-west)"))));
    }

    #[test]
    fn crlf_cannot_inject_a_header() {
        assert_eq!(
            clean("v1\r\nx-evil: 1", 64).as_deref(),
            Some("v1 x-evil: 1")
        );
        assert_eq!(clean("v1\nx", 64).as_deref(), Some("v1 x"));
        assert_eq!(clean("v1\rx", 64).as_deref(), Some("v1 x"));
    }

    #[test]
    fn every_control_character_and_del_becomes_a_space() {
        for b in (0u8..0x20).chain([0x7f]) {
            let input = format!("a{}b", char::from(b));
            assert_eq!(clean(&input, 16).as_deref(), Some("a b"), "byte {b:#04x}");
        }
        assert_eq!(clean("a\0\t\x1b\x7fb", 16).as_deref(), Some("a b"));
    }

    #[test]
    fn output_is_always_printable_ascii() {
        let nasty = "\u{0}\u{1f}x\u{7f}\u{80}\u{9f}\u{2028}y\u{feff}z\r\n\u{10ffff}";
        let out = clean(nasty, 1024).unwrap_or_default();
        assert!(!out.is_empty());
        assert!(out.bytes().all(|b| (0x20..0x7f).contains(&b)), "{out:?}");
    }

    #[test]
    fn surrounding_whitespace_and_controls_are_trimmed() {
        assert_eq!(clean("  \t v1 \r\n", 16).as_deref(), Some("v1"));
        assert_eq!(clean("\0v1\0", 16).as_deref(), Some("v1"));
        assert_eq!(clean("a  b", 16).as_deref(), Some("a  b"));
    }

    #[test]
    fn non_ascii_is_percent_encoded_as_utf8() {
        assert_eq!(clean("Zürich", 64).as_deref(), Some("Z%C3%BCrich"));
        assert_eq!(clean("東京", 64).as_deref(), Some("%E6%9D%B1%E4%BA%AC"));
        assert_eq!(clean("\u{1F680}", 64).as_deref(), Some("%F0%9F%9A%80"));
        assert_eq!(clean("\u{a0}x\u{a0}", 64).as_deref(), Some("%C2%A0x%C2%A0"));
        assert_eq!(clean("50%", 64).as_deref(), Some("50%"));
    }

    #[test]
    fn nothing_usable_is_none() {
        assert_eq!(clean("", 16), None);
        assert_eq!(clean("   ", 16), None);
        assert_eq!(clean("\r\n\t\0\x7f", 16), None);
        assert_eq!(clean("v1", 0), None);
        assert_eq!(clean("ü", 5), None);
    }

    #[test]
    fn overlong_input_is_cut_to_max_len() {
        let long = "a".repeat(1000);
        assert_eq!(clean(&long, 256).map(|s| s.len()), Some(256));
        assert_eq!(clean("abcdef", 3).as_deref(), Some("abc"));
        assert_eq!(clean("abc", 3).as_deref(), Some("abc"));
    }

    #[test]
    fn cut_never_splits_a_character_or_its_escape() {
        assert_eq!(clean("abü", 7).as_deref(), Some("ab"));
        assert_eq!(clean("abü", 8).as_deref(), Some("ab%C3%BC"));
        assert_eq!(clean("a\u{1F680}", 12).as_deref(), Some("a"));
        assert_eq!(clean("a\u{1F680}", 13).as_deref(), Some("a%F0%9F%9A%80"));
    }

    #[test]
    fn cut_does_not_leave_trailing_space() {
        assert_eq!(clean("abc def", 4).as_deref(), Some("abc"));
        assert_eq!(clean("abc\r\ndef", 4).as_deref(), Some("abc"));
    }

    #[test]
    fn percent_encoding_uses_upper_case_hex() {
        let mut out = String::new();
        for b in [0x00, 0x0f, 0x7f, 0xab, 0xff] {
            push_percent_encoded(&mut out, b);
        }
        assert_eq!(out, "%00%0F%7F%AB%FF");
    }

    #[test]
    fn clean_text_keeps_utf8_and_drops_controls() {
        let text = |v: &str, max| clean_text(v, max).map(Cow::into_owned);
        assert_eq!(text("Zürich", 256).as_deref(), Some("Zürich"));
        assert!(matches!(clean_text("eu-west", 256), Some(Cow::Borrowed(_))));
        assert_eq!(text(" a\r\n\tb\0 ", 256).as_deref(), Some("a b"));
        assert_eq!(text("\r\n", 256), None);
        assert_eq!(text("", 256), None);
        // Cut on a character boundary: "ü" is two bytes.
        assert_eq!(text("aü", 2).as_deref(), Some("a"));
        assert_eq!(text(&"é".repeat(200), 256).map(|t| t.len()), Some(256));
    }

    #[test]
    fn attribute_keys_use_a_small_alphabet() {
        let key = |k: &str| attribute_key(k).map(Cow::into_owned);
        assert_eq!(key("version").as_deref(), Some("version"));
        assert_eq!(key("build.sha-1_x").as_deref(), Some("build.sha-1_x"));
        assert_eq!(key("a b\r\nc").as_deref(), Some("a_b__c"));
        assert_eq!(key("zürich").as_deref(), Some("z_rich"));
        assert_eq!(key(""), None);
        assert_eq!(key(&"k".repeat(100)).map(|k| k.len()), Some(MAX_KEY_LEN));
    }
}
