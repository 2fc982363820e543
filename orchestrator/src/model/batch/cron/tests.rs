//! Parsing and next/previous times, table-driven with fixed instants.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().expect("a test timestamp")
}

fn zone(name: &str) -> TimeZone {
    TimeZone::get(name).expect("the tz database has the test zones")
}

#[test]
fn refuses_bad_schedules_naming_the_field_and_value() {
    let cases = [
        ("61 * * * *", r#"minute field "61": out of range 0-59"#),
        ("* 1-24 * * *", r#"hour field "1-24": out of range 0-23"#),
        ("* * 0 * *", r#"day-of-month field "0": out of range 1-31"#),
        (
            "* * * FOO *",
            r#"month field "FOO": not a number (1-12) or a name (JAN-DEC)"#,
        ),
        ("* * * * 7", r#"day-of-week field "7": out of range 0-6"#),
        (
            "*/0 * * * *",
            r#"minute field "*/0": step "0" is not a number from 1"#,
        ),
        (
            "5-3 * * * *",
            r#"minute field "5-3": range start 5 is after its end 3"#,
        ),
        (
            "* * *",
            r#""* * *": expected 5 fields (minute hour day-of-month month day-of-week) or a macro (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly), found 3"#,
        ),
        (
            "@every 5m",
            r#"unknown macro "@every 5m" (supported: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)"#,
        ),
        (
            "CRON_TZ=UTC * * * * *",
            "TZ and CRON_TZ are not supported in the schedule: set spec.timeZone instead",
        ),
        (
            "0 0 30 2 *",
            "never matches: day-of-month 30 does not occur in the months FEB",
        ),
    ];
    for (schedule, message) in cases {
        let error = schedule.parse::<Schedule>().expect_err(schedule);
        assert_eq!(error.to_string(), message, "{schedule}");
    }
}

#[test]
fn next_run_in_utc() {
    let utc = TimeZone::UTC;
    let cases = [
        // Steps over the whole field and over a range.
        (
            "*/15 * * * *",
            "2026-01-01T00:07:30Z",
            "2026-01-01T00:15:00Z",
        ),
        (
            "0 10-20/4 * * *",
            "2026-01-01T15:00:00Z",
            "2026-01-01T18:00:00Z",
        ),
        (
            "0 10-20/4 * * *",
            "2026-01-01T18:00:00Z",
            "2026-01-02T10:00:00Z",
        ),
        // `N/STEP` runs from N to the field's end.
        (
            "50/5 * * * *",
            "2026-01-01T00:56:00Z",
            "2026-01-01T01:50:00Z",
        ),
        // Strictly after: a run at `after` itself is not the next one.
        ("* * * * *", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"),
        // 29 February: the next leap year.
        ("0 0 29 2 *", "2025-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
        // Both days restricted: the 10th OR a Friday (2026-02-01 is a Sunday).
        ("0 0 10 * 5", "2026-02-01T00:00:00Z", "2026-02-06T00:00:00Z"),
        ("0 0 10 * 5", "2026-02-06T00:00:00Z", "2026-02-10T00:00:00Z"),
        // Day of month written with `*`: both must match (an odd day that is a Monday).
        (
            "0 0 */2 * 1",
            "2026-02-01T00:00:00Z",
            "2026-02-09T00:00:00Z",
        ),
        // Names, in any case.
        (
            "0 0 * mar mon-fri",
            "2026-02-01T00:00:00Z",
            "2026-03-02T00:00:00Z",
        ),
        ("@weekly", "2026-02-04T12:00:00Z", "2026-02-08T00:00:00Z"),
        ("@hourly", "2026-02-04T12:00:00Z", "2026-02-04T13:00:00Z"),
        ("@yearly", "2026-02-04T12:00:00Z", "2027-01-01T00:00:00Z"),
    ];
    for (schedule, after, next) in cases {
        let parsed: Schedule = schedule.parse().expect(schedule);
        assert_eq!(
            parsed.next_after(at(after), &utc),
            Some(at(next)),
            "{schedule} after {after}"
        );
    }
}

#[test]
fn daylight_saving_gaps_skip_and_folds_repeat() {
    let new_york = zone("America/New_York");
    let cases = [
        // 2026-03-08 02:00 EST jumps to 03:00 EDT: 02:30 does not happen that day.
        (
            "30 2 * * *",
            "2026-03-07T12:00:00-05:00",
            "2026-03-09T02:30:00-04:00",
        ),
        // 03:30 does, an hour of real time sooner than the wall clock says.
        (
            "30 3 * * *",
            "2026-03-08T00:00:00-05:00",
            "2026-03-08T03:30:00-04:00",
        ),
        // 2026-11-01 02:00 EDT goes back to 01:00 EST: 01:30 happens twice.
        (
            "30 1 * * *",
            "2026-11-01T00:00:00-04:00",
            "2026-11-01T01:30:00-04:00",
        ),
        (
            "30 1 * * *",
            "2026-11-01T01:30:00-04:00",
            "2026-11-01T01:30:00-05:00",
        ),
        (
            "30 1 * * *",
            "2026-11-01T01:30:00-05:00",
            "2026-11-02T01:30:00-05:00",
        ),
        // Midnight in New York is 05:00 in UTC.
        ("@daily", "2026-01-01T03:00:00Z", "2026-01-01T05:00:00Z"),
    ];
    for (schedule, after, next) in cases {
        let parsed: Schedule = schedule.parse().expect(schedule);
        assert_eq!(
            parsed.next_after(at(after), &new_york),
            Some(at(next)),
            "{schedule} after {after}"
        );
    }
}

#[test]
fn last_run_at_or_before() {
    let utc = TimeZone::UTC;
    let new_york = zone("America/New_York");
    let cases = [
        (
            "0 * * * *",
            &utc,
            "2026-01-01T10:00:00Z",
            "2026-01-01T10:00:00Z",
        ),
        (
            "0 * * * *",
            &utc,
            "2026-01-01T10:59:59Z",
            "2026-01-01T10:00:00Z",
        ),
        (
            "0 0 29 2 *",
            &utc,
            "2028-02-28T00:00:00Z",
            "2024-02-29T00:00:00Z",
        ),
        (
            "0 0 10 * 5",
            &utc,
            "2026-02-09T00:00:00Z",
            "2026-02-06T00:00:00Z",
        ),
        // The second 01:30 of the night the clocks go back.
        (
            "30 1 * * *",
            &new_york,
            "2026-11-01T01:45:00-05:00",
            "2026-11-01T01:30:00-05:00",
        ),
        // No 02:30 on the night the clocks go forward: the one before.
        (
            "30 2 * * *",
            &new_york,
            "2026-03-08T12:00:00-04:00",
            "2026-03-07T02:30:00-05:00",
        ),
    ];
    for (schedule, tz, at_time, last) in cases {
        let parsed: Schedule = schedule.parse().expect(schedule);
        assert_eq!(
            parsed.last_at_or_before(at(at_time), tz),
            Some(at(last)),
            "{schedule} at {at_time}"
        );
    }
}
