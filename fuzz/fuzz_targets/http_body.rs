//! The http source's body parsing: any body is either events or a refusal, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match weir_http::parse_events(data, 100) {
        Ok((events, single)) => {
            assert!(!events.is_empty() && events.len() <= 100);
            assert!(!single || events.len() == 1);
            assert!(events.iter().all(|e| e.get().starts_with('{')));
        }
        Err(weir_http::BodyError::Malformed(e)) => {
            let _ = (e.line(), e.column());
        }
        Err(weir_http::BodyError::Refused(status, message)) => {
            assert!(status.is_client_error() && !message.is_empty());
        }
    }
});
