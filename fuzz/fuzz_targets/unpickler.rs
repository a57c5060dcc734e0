#![no_main]
//! Any bytes as `data.pkl`: the restricted unpickler must return Ok or Err, never panic or hang.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = llamactl::formats::pickle::load_state_dict(data);
});
