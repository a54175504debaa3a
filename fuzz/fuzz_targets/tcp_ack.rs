//! The TCP gate's reader of the controller's lines (`{"ack":N}`, `{"grant":N}`): the first byte sets the read
//! size (1 to 256), the rest is the stream. Ids above the highest sent are refused, and the result may not
//! depend on how the stream was split.
#![no_main]

use deepgate::gate::tcp::read_controller_lines;
use libfuzzer_sys::fuzz_target;

/// The highest id the gate has sent, as far as the reader knows.
const HIGHEST_SENT: u64 = 1000;

fuzz_target!(|data: &[u8]| {
    let (chunk, stream) = deepgate_fuzz::chunked(data);
    let split = read_controller_lines(stream, chunk, HIGHEST_SENT);
    if let Ok((through, grants)) = &split {
        assert!(through.is_none_or(|id| id <= HIGHEST_SENT));
        assert!(grants.iter().all(|&id| id <= HIGHEST_SENT));
    }
    assert_eq!(split, read_controller_lines(stream, stream.len().max(1), HIGHEST_SENT));
});
