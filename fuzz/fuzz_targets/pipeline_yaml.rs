//! The pipeline file loader: any text either loads or gives an error that renders, with
//! its position, and never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lookup = |name: &str| (name.len() % 2 == 0).then(|| format!("v-{name}"));
    match weir::config::PipelineFile::parse(std::path::Path::new("fuzz.yaml"), text, lookup) {
        Ok(file) => {
            for (pointer, stage) in file.stages() {
                let _ = weir::config::stage_name(&pointer, stage);
                let _ = file.error_at(&format!("{pointer}/config"), "probe").to_string();
            }
            let _ = file.hash();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
