//! Volume options (`-o key=value`, one per line here): they parse or are refused, and what
//! parses shows back as options that parse to the same thing.
#![no_main]

use caravan::core::volume::VolumeOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = text
        .lines()
        .map(|l| l.split_once('=').unwrap_or((l, "")))
        .collect();
    if let Ok(options) = VolumeOptions::from_map(pairs.iter().copied()) {
        let shown = options.to_map();
        let again = VolumeOptions::from_map(shown.iter().map(|(k, v)| (*k, v.as_str())))
            .expect("options as shown parse again");
        assert_eq!(again, options, "options shown as {shown:?}");
        let _ = options.to_string();
    }
});
