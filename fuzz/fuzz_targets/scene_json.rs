//! Scene files are outside input: any bytes must give a scene or an error,
//! and a scene that validates must load into a simulation and step.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    engine::fuzzing::scene_json(data);
});
