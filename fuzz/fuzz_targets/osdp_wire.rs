//! The OSDP gate's wire inspector on one direction of the RS-485 line: the first byte sets the read size
//! (1 to 256), the rest is the stream; the counts may not depend on how the stream was split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::atomic::Ordering;

fuzz_target!(|data: &[u8]| {
    let (chunk, stream) = deepgate_fuzz::chunked(data);
    let split = deepgate::gate::osdp::fuzzing::inspect_wire(stream, chunk);
    let whole = deepgate::gate::osdp::fuzzing::inspect_wire(stream, stream.len());
    let counts = |stats: &deepgate::gate::osdp::WireStats| {
        [&stats.frames, &stats.bad_check, &stats.oversized, &stats.garbage, &stats.event_replies]
            .map(|counter| counter.load(Ordering::Relaxed))
    };
    assert_eq!(counts(&split), counts(&whole), "reads of {chunk} bytes");
});
