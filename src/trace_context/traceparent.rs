//! The `traceparent` header, W3C Trace Context Level 1
//! (<https://www.w3.org/TR/trace-context/#traceparent-header>).

use super::trim_ows;

/// Length of a version `00` header: `vv-<32 hex>-<16 hex>-ff`.
pub const TRACEPARENT_LEN: usize = 55;
/// The only flag version `00` defines.
pub const FLAG_SAMPLED: u8 = 0x01;

/// Byte offsets of the dashes that end the version, trace-id and parent-id fields.
const VERSION_END: usize = 2;
const TRACE_ID_END: usize = 35;
const PARENT_ID_END: usize = 52;

/// A valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceParentError {
    Version,
    ForbiddenVersion,
    Length,
    Dash,
    TraceId,
    ZeroTraceId,
    ParentId,
    ZeroParentId,
    Flags,
    TrailingData,
}

impl TraceParentError {
    /// A short reason for log lines.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Version => "version is not two lower-case hex digits",
            Self::ForbiddenVersion => "version ff is invalid",
            Self::Length => {
                "wrong length (version 00 is exactly 55 characters, later versions at least 55)"
            }
            Self::Dash => "a field is not followed by '-'",
            Self::TraceId => "trace-id is not 32 lower-case hex digits",
            Self::ZeroTraceId => "trace-id is all zeros",
            Self::ParentId => "parent-id is not 16 lower-case hex digits",
            Self::ZeroParentId => "parent-id is all zeros",
            Self::Flags => "trace-flags is not two lower-case hex digits",
            Self::TrailingData => "a later version's flags are not followed by '-' or the end",
        }
    }
}

/// Value of one lower-case hex digit (`HEXDIGLC`); upper case is not hex here.
pub(crate) fn lower_hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Decodes exactly `2 * N` lower-case hex digits.
fn decode_lower_hex<const N: usize>(text: Option<&[u8]>) -> Option<[u8; N]> {
    let text = text?;
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        if let [hi, lo] = pair {
            *byte = (lower_hex_value(*hi)? << 4) | lower_hex_value(*lo)?;
        }
    }
    Some(out)
}

fn push_hex_lower(out: &mut String, bytes: &[u8]) {
    const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        for nibble in [byte >> 4, byte & 0x0f] {
            if let Some(&digit) = HEX_LOWER.get(usize::from(nibble)) {
                out.push(char::from(digit));
            }
        }
    }
}

/// `bytes` as lower-case hex, the form of trace and span ids on the wire and in OTLP JSON.
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex_lower(&mut out, bytes);
    out
}

fn expect_dash(text: &[u8], at: usize) -> Result<(), TraceParentError> {
    match text.get(at) {
        Some(b'-') => Ok(()),
        _ => Err(TraceParentError::Dash),
    }
}

impl TraceParent {
    /// Parses and validates a `traceparent` value (surrounding spaces and tabs allowed).
    ///
    /// Version `00` must be exactly 55 characters. A later version (anything but `ff`) is
    /// parsed by its version-00 prefix: at least 55 characters, and anything after the flags
    /// must start with `-`; its further fields are ignored.
    pub fn parse(value: &str) -> Result<TraceParent, TraceParentError> {
        let text = trim_ows(value).as_bytes();
        let [version] =
            decode_lower_hex::<1>(text.get(..VERSION_END)).ok_or(TraceParentError::Version)?;
        if version == 0xff {
            return Err(TraceParentError::ForbiddenVersion);
        }
        if text.len() < TRACEPARENT_LEN || (version == 0 && text.len() != TRACEPARENT_LEN) {
            return Err(TraceParentError::Length);
        }
        for at in [VERSION_END, TRACE_ID_END, PARENT_ID_END] {
            expect_dash(text, at)?;
        }
        if text.len() > TRACEPARENT_LEN && text.get(TRACEPARENT_LEN) != Some(&b'-') {
            return Err(TraceParentError::TrailingData);
        }
        let trace_id: [u8; 16] = decode_lower_hex(text.get(VERSION_END + 1..TRACE_ID_END))
            .ok_or(TraceParentError::TraceId)?;
        if trace_id == [0; 16] {
            return Err(TraceParentError::ZeroTraceId);
        }
        let parent_id: [u8; 8] = decode_lower_hex(text.get(TRACE_ID_END + 1..PARENT_ID_END))
            .ok_or(TraceParentError::ParentId)?;
        if parent_id == [0; 8] {
            return Err(TraceParentError::ZeroParentId);
        }
        let [flags] = decode_lower_hex::<1>(text.get(PARENT_ID_END + 1..TRACEPARENT_LEN))
            .ok_or(TraceParentError::Flags)?;
        Ok(TraceParent {
            version,
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The caller may have recorded this trace.
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    pub fn trace_id_hex(&self) -> String {
        hex_lower(&self.trace_id)
    }

    pub fn parent_id_hex(&self) -> String {
        hex_lower(&self.parent_id)
    }

    /// The same trace continued with `span_id` as the parent (the spec's "update
    /// parent-id" mutation). `span_id` must not be all zeros.
    pub fn with_parent(&self, span_id: [u8; 8]) -> TraceParent {
        TraceParent {
            parent_id: span_id,
            ..*self
        }
    }

    /// The flags as written in version `00`: a version-00 header keeps all its flags (a
    /// proxy forwards what it got, including bits defined after Level 1); a header of a
    /// later version keeps only the sampled bit, the one flag the spec lets us read from it.
    fn flags_for_version_00(&self) -> u8 {
        if self.version == 0 {
            self.flags
        } else {
            self.flags & FLAG_SAMPLED
        }
    }

    /// The header value, always in version `00` form (the spec's "downgrade the version").
    pub fn to_header(&self) -> String {
        let mut out = String::with_capacity(TRACEPARENT_LEN);
        out.push_str("00-");
        push_hex_lower(&mut out, &self.trace_id);
        out.push('-');
        push_hex_lower(&mut out, &self.parent_id);
        out.push('-');
        push_hex_lower(&mut out, &[self.flags_for_version_00()]);
        out
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";
    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn header(version: &str, trace_id: &str, parent_id: &str, flags: &str) -> String {
        format!("{version}-{trace_id}-{parent_id}-{flags}")
    }

    fn err(value: &str) -> TraceParentError {
        match TraceParent::parse(value) {
            Ok(tp) => unreachable!("{value:?} parsed as {tp:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_the_spec_example() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert_eq!(tp.version, 0);
        assert_eq!(tp.trace_id_hex(), TRACE_ID);
        assert_eq!(tp.parent_id_hex(), PARENT_ID);
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(
            tp.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(tp.flags, 1);
        assert!(tp.sampled());
        assert_eq!(tp.to_header(), VALID);
    }

    #[test]
    fn surrounding_spaces_and_tabs_are_trimmed() {
        let padded = format!(" \t{VALID}\t ");
        assert_eq!(TraceParent::parse(&padded).unwrap().to_header(), VALID);
    }

    #[test]
    fn version_00_must_be_exactly_55_characters() {
        assert_eq!(VALID.len(), TRACEPARENT_LEN);
        assert_eq!(err(&VALID[..54]), TraceParentError::Length);
        assert_eq!(err(&format!("{VALID}0")), TraceParentError::Length);
        assert_eq!(err(&format!("{VALID}-")), TraceParentError::Length);
        assert_eq!(err(&format!("{VALID}-01")), TraceParentError::Length);
        assert_eq!(err(""), TraceParentError::Version);
        assert_eq!(err("00"), TraceParentError::Length);
    }

    #[test]
    fn version_must_be_two_lower_case_hex_digits() {
        for version in ["0A", "A0", "0g", "zz", "-0", "0-", "0", "+1"] {
            let value = header(version, TRACE_ID, PARENT_ID, "01");
            assert_eq!(err(&value), TraceParentError::Version, "{value}");
        }
    }

    #[test]
    fn version_ff_is_invalid() {
        assert_eq!(
            err(&header("ff", TRACE_ID, PARENT_ID, "01")),
            TraceParentError::ForbiddenVersion
        );
        assert_eq!(
            err(&format!("{}-00", header("ff", TRACE_ID, PARENT_ID, "01"))),
            TraceParentError::ForbiddenVersion
        );
    }

    #[test]
    fn dashes_must_be_in_place() {
        let base = VALID.as_bytes().to_vec();
        for at in [2, 35, 52] {
            let mut bad = base.clone();
            bad[at] = b'_';
            assert_eq!(
                err(std::str::from_utf8(&bad).unwrap()),
                TraceParentError::Dash,
                "at {at}"
            );
        }
        // A dash moved one place: fields of the wrong width.
        assert_eq!(
            err(&format!("00-{}-0{}-01", &TRACE_ID[..31], PARENT_ID)),
            TraceParentError::Dash
        );
    }

    #[test]
    fn trace_id_must_be_lower_case_hex_and_not_zero() {
        let upper = TRACE_ID.to_uppercase();
        assert_eq!(
            err(&header("00", &upper, PARENT_ID, "01")),
            TraceParentError::TraceId
        );
        let mut one_upper = TRACE_ID.to_string();
        one_upper.replace_range(0..1, "B");
        assert_eq!(
            err(&header("00", &one_upper, PARENT_ID, "01")),
            TraceParentError::TraceId
        );
        let non_hex = format!("{}g", &TRACE_ID[..31]);
        assert_eq!(
            err(&header("00", &non_hex, PARENT_ID, "01")),
            TraceParentError::TraceId
        );
        let zeros = "0".repeat(32);
        assert_eq!(
            err(&header("00", &zeros, PARENT_ID, "01")),
            TraceParentError::ZeroTraceId
        );
        let one = format!("{}1", "0".repeat(31));
        assert!(TraceParent::parse(&header("00", &one, PARENT_ID, "01")).is_ok());
    }

    #[test]
    fn parent_id_must_be_lower_case_hex_and_not_zero() {
        let upper = PARENT_ID.to_uppercase();
        assert_eq!(
            err(&header("00", TRACE_ID, &upper, "01")),
            TraceParentError::ParentId
        );
        assert_eq!(
            err(&header("00", TRACE_ID, "00f067aa0ba902bx", "01")),
            TraceParentError::ParentId
        );
        assert_eq!(
            err(&header("00", TRACE_ID, "0000000000000000", "01")),
            TraceParentError::ZeroParentId
        );
        assert!(TraceParent::parse(&header("00", TRACE_ID, "0000000000000001", "01")).is_ok());
    }

    #[test]
    fn flags_must_be_lower_case_hex() {
        for flags in ["0G", "AB", "-1", "x0"] {
            assert_eq!(
                err(&header("00", TRACE_ID, PARENT_ID, flags)),
                TraceParentError::Flags,
                "{flags}"
            );
        }
    }

    #[test]
    fn non_ascii_input_is_refused_not_a_crash() {
        assert_eq!(err(&VALID.replacen('4', "é", 1)), TraceParentError::Length);
        let padded = format!("00-{}é-{PARENT_ID}-01", &TRACE_ID[..30]);
        assert_eq!(err(&padded), TraceParentError::TraceId);
    }

    #[test]
    fn every_flags_byte_round_trips_for_version_00() {
        for flags in 0u8..=0xff {
            let value = header("00", TRACE_ID, PARENT_ID, &format!("{flags:02x}"));
            let tp = TraceParent::parse(&value).unwrap();
            assert_eq!(tp.flags, flags);
            assert_eq!(tp.sampled(), flags & 1 == 1);
            assert_eq!(tp.to_header(), value);
        }
    }

    #[test]
    fn later_versions_are_parsed_by_prefix() {
        let exact = header("01", TRACE_ID, PARENT_ID, "01");
        let tp = TraceParent::parse(&exact).unwrap();
        assert_eq!(tp.version, 1);
        assert_eq!(tp.trace_id_hex(), TRACE_ID);
        assert_eq!(tp.parent_id_hex(), PARENT_ID);
        assert!(tp.sampled());

        let extended = format!(
            "{}-what-the-future-holds",
            header("cc", TRACE_ID, PARENT_ID, "01")
        );
        let tp = TraceParent::parse(&extended).unwrap();
        assert_eq!(tp.version, 0xcc);
        assert_eq!(tp.to_header(), VALID);

        assert_eq!(TraceParent::parse(&format!("{exact}-")).unwrap().version, 1);
    }

    #[test]
    fn later_versions_still_need_55_characters_and_a_dash_after_flags() {
        let short = header("01", TRACE_ID, PARENT_ID, "0");
        assert_eq!(err(&short), TraceParentError::Length);
        let glued = format!("{}0", header("01", TRACE_ID, PARENT_ID, "01"));
        assert_eq!(err(&glued), TraceParentError::TrailingData);
        let glued = format!("{}.x", header("01", TRACE_ID, PARENT_ID, "01"));
        assert_eq!(err(&glued), TraceParentError::TrailingData);
        let zero = header("01", &"0".repeat(32), PARENT_ID, "01");
        assert_eq!(err(&zero), TraceParentError::ZeroTraceId);
        let upper = header("01", TRACE_ID, &PARENT_ID.to_uppercase(), "01");
        assert_eq!(err(&upper), TraceParentError::ParentId);
    }

    #[test]
    fn a_later_version_is_written_as_00_with_only_the_sampled_flag() {
        let tp = TraceParent::parse(&header("02", TRACE_ID, PARENT_ID, "ff")).unwrap();
        assert_eq!(tp.flags, 0xff);
        assert_eq!(tp.to_header(), header("00", TRACE_ID, PARENT_ID, "01"));
        let tp = TraceParent::parse(&header("02", TRACE_ID, PARENT_ID, "fe")).unwrap();
        assert!(!tp.sampled());
        assert_eq!(tp.to_header(), header("00", TRACE_ID, PARENT_ID, "00"));
    }

    #[test]
    fn with_parent_replaces_only_the_parent_id() {
        let tp = TraceParent::parse(&header("00", TRACE_ID, PARENT_ID, "03")).unwrap();
        let child = tp.with_parent([0xde, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x22, 0x33]);
        assert_eq!(child.trace_id, tp.trace_id);
        assert_eq!(child.flags, 3);
        assert_eq!(
            child.to_header(),
            header("00", TRACE_ID, "deadbeef00112233", "03")
        );
        assert_eq!(tp.parent_id_hex(), PARENT_ID);
    }

    #[test]
    fn hex_lower_encodes_every_byte() {
        let all: Vec<u8> = (0u8..=0xff).collect();
        let hex = hex_lower(&all);
        assert_eq!(hex.len(), 512);
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            assert_eq!(std::str::from_utf8(pair).unwrap(), format!("{i:02x}"));
        }
        assert_eq!(hex_lower(&[]), "");
    }

    #[test]
    fn every_error_has_a_reason() {
        let all = [
            TraceParentError::Version,
            TraceParentError::ForbiddenVersion,
            TraceParentError::Length,
            TraceParentError::Dash,
            TraceParentError::TraceId,
            TraceParentError::ZeroTraceId,
            TraceParentError::ParentId,
            TraceParentError::ZeroParentId,
            TraceParentError::Flags,
            TraceParentError::TrailingData,
        ];
        let reasons: std::collections::BTreeSet<&str> = all.iter().map(|e| e.as_str()).collect();
        assert_eq!(reasons.len(), all.len());
        assert!(reasons.iter().all(|r| !r.is_empty()));
    }
}
