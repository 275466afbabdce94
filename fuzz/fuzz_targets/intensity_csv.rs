//! The user's grid-intensity time series (`--intensity-csv`, `TimeSeries` in
//! `agent/src/carbon/intensity.rs`): header, comments, three timestamp forms, quoted fields, then
//! lookups and time-weighted means over it. Input: the CSV's bytes.
#![no_main]

use carbon_agent::carbon::TimeSeries;
use carbon_agent::carbon::intensity::{MAX_G_PER_KWH, SeriesError};
use carbon_agent_fuzz::close;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `TimeSeries::load` reads the file as UTF-8: anything else is an I/O error there.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let series = match TimeSeries::parse(text, "fuzz.csv") {
        Ok(series) => series,
        Err(SeriesError::Parse { origin, line, msg }) => {
            assert_eq!(origin, "fuzz.csv");
            assert!(line >= 1 && line <= text.lines().count() && !msg.is_empty(), "{line}: {msg}");
            return;
        }
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.csv"), "{e}");
            return;
        }
    };
    let points = series.points();
    assert!(!points.is_empty());
    for w in points.windows(2) {
        assert!(w[0].0 < w[1].0, "times strictly increase: {w:?}");
    }
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &(_, v)| (lo.min(v), hi.max(v)));
    assert!(lo >= 0.0 && hi <= MAX_G_PER_KWH, "{lo}..{hi}");
    let (first, last) = (points[0].0, points[points.len() - 1].0);
    assert!(first.is_finite() && last.is_finite());

    // Each point's own value holds at its time; nothing is known before the first.
    for &(t, v) in points {
        assert_eq!(series.at(t), Some(v), "at {t}");
    }
    if first - 1.0 < first {
        assert_eq!(series.at(first - 1.0), None);
    }
    // A mean over any covered span lies within the values' range.
    let step = if points.len() > 1 { last - points[points.len() - 2].0 } else { 3600.0 };
    for (start, end) in [(first, last + step), (first, (first + last) / 2.0), (last, last + step / 2.0)] {
        if let Some(mean) = series.mean_over(start, end) {
            assert!(mean.is_finite(), "mean over {start}..{end} is {mean}");
            assert!(
                mean >= lo - 1e-9 * hi.max(1.0) && mean <= hi * (1.0 + 1e-9) + 1e-9,
                "{mean} not in {lo}..{hi}"
            );
        }
    }
    // Over the first step, the mean is the first value.
    if let Some(&(t, _)) = points.get(1)
        && let Some(mean) = series.mean_over(first, t)
    {
        assert!(close(mean, points[0].1, 1e-9), "{mean} over the first step, not {}", points[0].1);
    }
    assert!(series.year().is_none_or(|y| y <= 9999));

    // Written back as `unix seconds,value` (when the times are whole seconds since 1970), the
    // series parses to the same points.
    if points.iter().all(|&(t, _)| t >= 0.0 && t.fract() == 0.0 && t < 9e15) {
        let csv: String = points.iter().map(|&(t, v)| format!("{},{v}\n", t as u64)).collect();
        let again = TimeSeries::parse(&csv, "again.csv").expect("a series written back parses");
        assert_eq!(again.points(), points);
    }
});
