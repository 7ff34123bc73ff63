//! The daemon's config file: any text resolves to settings or to an error.
#![no_main]

use caravan::daemon::config::DaemonArgs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args = DaemonArgs {
        node: Some("fuzz".into()),
        ..Default::default()
    };
    let _ = args.resolve_text(text, std::path::Path::new("fuzz.toml"));
});
