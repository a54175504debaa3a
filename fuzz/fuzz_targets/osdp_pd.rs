//! The OSDP gate's peripheral device (libosdp with this gate's identity, Secure Channel enforced, install mode,
//! its command callback) fed hostile bytes as the controller's side of the line: the first byte sets the read
//! size (1 to 256), the rest is the stream. A key the bytes manage to set is stored in the scratch directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (chunk, stream) = deepgate_fuzz::chunked(data);
    let key = deepgate_fuzz::scratch("osdp_pd").join("osdp.key");
    deepgate_fuzz::remove(&key);
    deepgate::gate::osdp::fuzzing::peripheral_device(stream, chunk, &key).expect("the PD starts");
});
