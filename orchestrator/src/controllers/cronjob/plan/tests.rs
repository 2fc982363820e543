//! The CronJob plan at fixed times.

use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().expect("a test timestamp")
}

fn spec(schedule: &str, created: &str) -> CronSpec {
    CronSpec {
        schedule: schedule.parse().expect("a valid schedule"),
        time_zone: TimeZone::UTC,
        starting_deadline_seconds: None,
        concurrency_policy: ConcurrencyPolicy::Allow,
        suspend: false,
        successful_jobs_history_limit: 3,
        failed_jobs_history_limit: 1,
        created: at(created),
        last_scheduled: None,
    }
}

fn run(name: &str, state: JobState, created: &str) -> Run {
    Run {
        name: name.into(),
        state,
        created: at(created),
        finished: (state != JobState::Running).then(|| at(created)),
    }
}

fn reasons(plan: &Plan) -> Vec<&'static str> {
    plan.events.iter().map(|e| e.reason).collect()
}

#[test]
fn job_names_count_minutes_since_the_epoch() {
    let scheduled = Timestamp::from_second(60 * 29_000_000).expect("in range");
    assert_eq!(job_name("backup", scheduled), "backup-29000000");
}

#[test]
fn starts_the_first_run_after_creation_and_requeues_for_the_next() {
    let s = spec("* * * * *", "2026-01-01T10:00:30Z");
    let early = plan("cj", &s, &[], &[], at("2026-01-01T10:00:45Z"));
    assert_eq!(early.start, None);
    assert_eq!(early.requeue_after, Some(Duration::from_millis(15_100)));
    let due = plan("cj", &s, &[], &[], at("2026-01-01T10:01:05Z"));
    let start = due.start.expect("the 10:01 run is due");
    assert_eq!(start.scheduled, at("2026-01-01T10:01:00Z"));
    assert_eq!(due.active, std::slice::from_ref(&start.job_name));
    // Once started (recorded, or its Job exists) it does not start again.
    let recorded = CronSpec {
        last_scheduled: Some(start.scheduled),
        ..s.clone()
    };
    assert_eq!(
        plan("cj", &recorded, &[], &[], at("2026-01-01T10:01:30Z")).start,
        None
    );
    let exists = [run(
        &start.job_name,
        JobState::Running,
        "2026-01-01T10:01:01Z",
    )];
    assert_eq!(
        plan("cj", &s, &exists, &[], at("2026-01-01T10:01:30Z")).start,
        None
    );
}

#[test]
fn only_the_latest_missed_run_starts_with_a_warning_past_a_hundred() {
    let s = spec("*/5 * * * *", "2026-01-01T09:00:00Z");
    let p = plan("cj", &s, &[], &[], at("2026-01-01T10:07:00Z"));
    assert_eq!(
        p.start.as_ref().map(|s| s.scheduled),
        Some(at("2026-01-01T10:05:00Z"))
    );
    assert!(p.events.is_empty());
    let old = spec("*/5 * * * *", "2025-12-31T09:00:00Z");
    let p = plan("cj", &old, &[], &[], at("2026-01-01T10:07:00Z"));
    assert_eq!(
        p.start.as_ref().map(|s| s.scheduled),
        Some(at("2026-01-01T10:05:00Z"))
    );
    assert_eq!(reasons(&p), ["TooManyMissedTimes"]);
    // A starting deadline bounds what counts as missed.
    let bounded = CronSpec {
        starting_deadline_seconds: Some(600),
        ..old
    };
    let p = plan("cj", &bounded, &[], &[], at("2026-01-01T10:07:00Z"));
    assert!(p.start.is_some());
    assert!(p.events.is_empty());
}

#[test]
fn a_run_past_its_starting_deadline_is_skipped() {
    let s = CronSpec {
        starting_deadline_seconds: Some(10),
        last_scheduled: Some(at("2026-01-01T10:04:00Z")),
        ..spec("* * * * *", "2026-01-01T09:00:00Z")
    };
    let late = plan("cj", &s, &[], &[], at("2026-01-01T10:05:30Z"));
    assert_eq!(late.start, None);
    assert_eq!(reasons(&late), ["MissSchedule"]);
    assert_eq!(late.requeue_after, Some(Duration::from_millis(30_100)));
    let in_time = plan("cj", &s, &[], &[], at("2026-01-01T10:05:10Z"));
    assert!(in_time.start.is_some());
}

#[test]
fn concurrency_policies() {
    let base = spec("* * * * *", "2026-01-01T09:00:00Z");
    let running = [run("cj-1", JobState::Running, "2026-01-01T09:59:00Z")];
    let now = at("2026-01-01T10:00:10Z");
    let allow = plan("cj", &base, &running, &[], now);
    assert!(allow.start.is_some());
    assert_eq!(allow.active.len(), 2);
    let forbid = CronSpec {
        concurrency_policy: ConcurrencyPolicy::Forbid,
        ..base.clone()
    };
    let p = plan("cj", &forbid, &running, &[], now);
    assert_eq!(
        (p.start.clone(), reasons(&p)),
        (None, vec!["JobAlreadyActive"])
    );
    assert_eq!(p.active, ["cj-1"]);
    // A finished Job does not hold the next run back.
    let done = [run("cj-1", JobState::Complete, "2026-01-01T09:59:00Z")];
    assert!(plan("cj", &forbid, &done, &[], now).start.is_some());
    let replace = CronSpec {
        concurrency_policy: ConcurrencyPolicy::Replace,
        ..base
    };
    let p = plan("cj", &replace, &running, &[], now);
    let start = p.start.expect("replaced");
    assert_eq!(p.replace, ["cj-1"]);
    assert_eq!(p.active, [start.job_name]);
}

#[test]
fn suspended_starts_nothing_and_waits_for_a_change() {
    let s = CronSpec {
        suspend: true,
        ..spec("* * * * *", "2026-01-01T09:00:00Z")
    };
    let p = plan("cj", &s, &[], &[], at("2026-01-01T10:00:10Z"));
    assert_eq!((p.start, p.requeue_after), (None, None));
}

#[test]
fn history_limits_drop_the_oldest_finished_jobs() {
    let s = spec("0 0 1 1 *", "2026-01-01T09:00:00Z");
    let runs = [
        run("ok-1", JobState::Complete, "2026-01-01T10:01:00Z"),
        run("ok-5", JobState::Complete, "2026-01-01T10:05:00Z"),
        run("ok-2", JobState::Complete, "2026-01-01T10:02:00Z"),
        run("ok-4", JobState::Complete, "2026-01-01T10:04:00Z"),
        run("ok-3", JobState::Complete, "2026-01-01T10:03:00Z"),
        run("bad-1", JobState::Failed, "2026-01-01T10:01:00Z"),
        run("bad-2", JobState::Failed, "2026-01-01T10:02:00Z"),
        run("running", JobState::Running, "2026-01-01T10:00:00Z"),
    ];
    let p = plan("cj", &s, &runs, &[], at("2026-01-01T10:06:00Z"));
    assert_eq!(p.prune, ["ok-1", "ok-2", "bad-1"]);
    assert_eq!(p.active, ["running"]);
    assert_eq!(p.last_successful, Some(at("2026-01-01T10:05:00Z")));
}

#[test]
fn a_job_seen_finished_is_reported_once() {
    let s = spec("0 0 1 1 *", "2026-01-01T09:00:00Z");
    let runs = [run("cj-1", JobState::Failed, "2026-01-01T10:00:00Z")];
    let now = at("2026-01-01T10:06:00Z");
    let p = plan("cj", &s, &runs, &["cj-1".to_string()], now);
    assert_eq!(reasons(&p), ["SawCompletedJob"]);
    assert_eq!(
        p.events[0].message,
        "Saw completed job: cj-1, condition: Failed"
    );
    assert!(plan("cj", &s, &runs, &[], now).events.is_empty());
}

#[test]
fn schedules_are_read_in_the_time_zone() {
    // New York skips 02:30 on 2026-03-08 (02:00 EST becomes 03:00 EDT).
    let s = CronSpec {
        time_zone: TimeZone::get("America/New_York").expect("the tz database has it"),
        last_scheduled: Some(at("2026-03-07T02:30:00-05:00")),
        ..spec("30 2 * * *", "2026-03-01T00:00:00Z")
    };
    let p = plan("cj", &s, &[], &[], at("2026-03-08T12:00:00-04:00"));
    assert_eq!(p.start, None);
    // Next: 2026-03-09 02:30 EDT, 14.5 hours later.
    assert_eq!(
        p.requeue_after,
        Some(Duration::from_secs(14 * 3600 + 1800) + Duration::from_millis(100))
    );
}
