//! Docker's plugin request bodies: any bytes, for any method, decode to a request or to an
//! error, and a request's options parse or are refused; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 9] = [
    "Create", "Remove", "Mount", "Unmount", "Path", "Get", "List", "Capabilities", "Other",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(pick) % METHODS.len()];
    if let Ok(req) = caravan::api::plugin::parse(method, body) {
        if let Some(opts) = req.opts {
            let _ = opts.options();
        }
        let _ = caravan::core::names::validate_name(&req.name);
        let _ = caravan::core::names::validate_mount_id(&req.id);
    }
});
