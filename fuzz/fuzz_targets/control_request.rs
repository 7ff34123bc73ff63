//! The control API's request bodies (what the CLI sends): any bytes decode to a request of
//! each type or to an error; a create request's options parse or are refused.
#![no_main]

use caravan::api::control::{parse_body, CreateRequest, MountRequest, TakeoverRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_body::<CreateRequest>(data) {
        let _ = caravan::core::names::validate_name(&req.name);
        let _ = req.options.options();
    }
    if let Ok(req) = parse_body::<MountRequest>(data) {
        let _ = caravan::core::names::validate_mount_id(&req.id);
    }
    let _ = parse_body::<TakeoverRequest>(data);
});
