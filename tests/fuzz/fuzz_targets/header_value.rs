//! Header value sanitising: nothing with CR, LF, NUL, another control character or DEL
//! comes out, nothing over the bound, and nothing with surrounding spaces. A cut output
//! is a prefix of the uncut one, and sanitising an output changes nothing.
//!
//! Input: the bound (two bytes, little endian, modulo 1024), then the value.
#![no_main]

use std::borrow::Cow;

use consul_enricher::header_value::sanitize;
use consul_enricher_fuzz::assert_clean_value;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((bound, value)) = input.split_first_chunk::<2>() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    let max_len = usize::from(u16::from_le_bytes(*bound) % 1024);
    let Some(out) = sanitize(value, max_len) else {
        return;
    };
    assert_clean_value("sanitize", &out, max_len);
    let uncut = sanitize(value, usize::MAX).expect("what fits a bound fits no bound");
    assert!(
        uncut.starts_with(out.as_ref()),
        "{out:?} is not a prefix of {uncut:?}"
    );
    assert!(matches!(sanitize(&out, max_len), Some(Cow::Borrowed(again)) if again == out));
});
