//! Electricity Maps `carbon-intensity/latest` answers (`parse_latest` in
//! `agent/src/carbon/provider.rs`, what the client does with a 200 body). Input: the body.
#![no_main]

use carbon_agent::carbon::intensity::MAX_G_PER_KWH;
use carbon_agent::carbon::provider::{ProviderError, parse_latest};
use carbon_agent_fuzz::close;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The client reads the body as UTF-8; anything else is a transport error there.
    let Ok(body) = std::str::from_utf8(data) else { return };
    let reading = match parse_latest(body) {
        Ok(r) => r,
        Err(ProviderError::BadResponse(msg)) => {
            assert!(!msg.is_empty());
            return;
        }
        Err(e) => panic!("a body can only be a bad response, not {e:?}"),
    };
    assert!((0.0..=MAX_G_PER_KWH).contains(&reading.g_per_kwh), "{reading:?}");
    // The year is the datetime's first four characters, all digits.
    if let Some(year) = reading.year {
        let dt = reading.datetime.as_deref().expect("a year comes from a datetime");
        assert!(dt.starts_with(&format!("{year:04}")), "{year} from {dt:?}");
    }
    // What was read is what a generic JSON parser sees in the body.
    let value: serde_json::Value = serde_json::from_str(body).expect("parsed, so JSON");
    assert_eq!(value["carbonIntensity"].as_f64(), Some(reading.g_per_kwh));
    assert_eq!(value["datetime"].as_str(), reading.datetime.as_deref());
    // Written back, the reading parses to itself.
    let again = serde_json::json!({ "carbonIntensity": reading.g_per_kwh, "datetime": reading.datetime });
    // (serde_json's default float parsing may be off by an ulp, so the intensity within 1e-12.)
    let again = parse_latest(&again.to_string()).expect("a reading written back parses");
    assert!(close(again.g_per_kwh, reading.g_per_kwh, 1e-12), "{again:?} vs {reading:?}");
    assert_eq!((again.year, &again.datetime), (reading.year, &reading.datetime));
});
