//! The JSON reader: a document it accepts is one serde_json accepts too, and one serde_json
//! accepts is refused only for nesting deeper than ours; what it reads writes back to text
//! that reads equal.
#![no_main]

use consul_enricher::json;
use consul_enricher_fuzz::write_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let ours = json::parse(input);
    let reference = serde_json::from_slice::<serde_json::Value>(input);
    match (&ours, &reference) {
        (Ok(_), Err(e)) => panic!("accepted what serde_json refuses: {e}"),
        (Err(e), Ok(_)) => assert_eq!(e.reason, "nested too deeply", "{e}"),
        _ => {}
    }
    if let Err(e) = &ours {
        assert!(e.offset <= input.len());
    }
    let Ok(doc) = ours else {
        return;
    };
    let mut text = String::new();
    write_json(&doc, &mut text);
    assert_eq!(json::parse(text.as_bytes()), Ok(doc));
});
