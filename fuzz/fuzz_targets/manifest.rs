//! The model manifest (`models/manifest.toml`) as the runtime loads and validates it.
#![no_main]

use deepgate::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = deepgate_fuzz::scratch("manifest").join("manifest.toml");
    deepgate_fuzz::write(&path, data);
    if let Ok(manifest) = Manifest::load(&path) {
        for model in &manifest.models {
            let _ = manifest.path_of(model);
            let _ = model.input.image_size();
        }
    }
});
