//! Cron schedules as CronJobs write them: the standard five fields (minute, hour,
//! day of month, month, day of week) with lists, ranges, steps and month and day
//! names, or a macro (@hourly ... @yearly), read as Kubernetes reads them.
//!
//! A schedule matches an instant when the instant's wall-clock time in the CronJob's
//! time zone matches every field. When both day fields are restricted (neither
//! starts with `*`), a day matches if either does (Vixie cron's rule). A wall-clock
//! time skipped by a daylight-saving jump never happens; one that happens twice
//! (the clocks go back) matches twice, once per offset, as Kubernetes' cron library
//! does.

use std::fmt;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};

/// Why a schedule is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "{schedule:?}: expected 5 fields (minute hour day-of-month month day-of-week) or a \
         macro ({MACROS}), found {found}"
    )]
    FieldCount { schedule: String, found: usize },
    #[error("unknown macro {0:?} (supported: {MACROS})")]
    UnknownMacro(String),
    #[error("TZ and CRON_TZ are not supported in the schedule: set spec.timeZone instead")]
    TimeZonePrefix,
    #[error("{field} field {value:?}: {reason}")]
    Field {
        field: FieldName,
        value: String,
        reason: String,
    },
    #[error("never matches: day-of-month {day} does not occur in the months {months}")]
    Never { day: u8, months: String },
    #[error(
        "{0:?}: the time zone database is not available on this node (install tzdata, or set \
         TZDIR)"
    )]
    NoTimeZoneDatabase(String),
    #[error("{0:?} is not an IANA time zone name (such as \"Europe/Berlin\" or \"UTC\")")]
    UnknownTimeZone(String),
}

const MACROS: &str = "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly";

/// The five fields, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldName {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl fmt::Display for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldName::Minute => "minute",
            FieldName::Hour => "hour",
            FieldName::DayOfMonth => "day-of-month",
            FieldName::Month => "month",
            FieldName::DayOfWeek => "day-of-week",
        })
    }
}

impl FieldName {
    const ALL: [FieldName; 5] = [
        FieldName::Minute,
        FieldName::Hour,
        FieldName::DayOfMonth,
        FieldName::Month,
        FieldName::DayOfWeek,
    ];

    /// The values the field may hold (day of week: 0 is Sunday, as Kubernetes has it).
    fn bounds(self) -> (u8, u8) {
        match self {
            FieldName::Minute => (0, 59),
            FieldName::Hour => (0, 23),
            FieldName::DayOfMonth => (1, 31),
            FieldName::Month => (1, 12),
            FieldName::DayOfWeek => (0, 6),
        }
    }

    /// The names a field accepts for its values, from its lowest value on.
    fn names(self) -> &'static [&'static str] {
        match self {
            FieldName::Month => &[
                "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            ],
            FieldName::DayOfWeek => &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
            _ => &[],
        }
    }
}

/// One field: the set of values it matches (bit `v` for value `v`), and whether it
/// was written as `*` (which matters for the day-of-month/day-of-week rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    values: u64,
    star: bool,
}

impl Field {
    fn has(self, value: i8) -> bool {
        u32::try_from(value).is_ok_and(|v| v < 64 && self.values & (1 << v) != 0)
    }

    /// The values, lowest first.
    fn ascending(self) -> impl Iterator<Item = i8> {
        (0..64i8).filter(move |v| self.has(*v))
    }
}

/// The time zone named by a CronJob's `timeZone`: an IANA name from the node's time
/// zone database ("Local" is not a name: it would differ between nodes).
pub fn time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    if name.eq_ignore_ascii_case("local") {
        return Err(ScheduleError::UnknownTimeZone(name.to_string()));
    }
    let database = jiff::tz::db();
    if database.is_definitively_empty() {
        return Err(ScheduleError::NoTimeZoneDatabase(name.to_string()));
    }
    database
        .get(name)
        .map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))
}

/// A parsed schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    minute: Field,
    hour: Field,
    day_of_month: Field,
    month: Field,
    day_of_week: Field,
}

/// How far ahead or back a search for a matching day goes: a 29 February comes
/// at least once in 8 years.
const SEARCH_DAYS: usize = 366 * 9;

/// The most a time zone's offset changes at once (real ones change by 2 hours at
/// most): the window in which a wall-clock time can map to either side of an
/// instant.
const MAX_OFFSET_JUMP: jiff::SignedDuration = jiff::SignedDuration::from_hours(4);

impl std::str::FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(schedule: &str) -> Result<Self, ScheduleError> {
        let schedule = schedule.trim();
        if schedule.starts_with("TZ=") || schedule.starts_with("CRON_TZ=") {
            return Err(ScheduleError::TimeZonePrefix);
        }
        let expanded = match schedule {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(ScheduleError::UnknownMacro(other.to_string()));
            }
            other => other,
        };
        let texts: Vec<&str> = expanded.split_whitespace().collect();
        if texts.len() != FieldName::ALL.len() {
            return Err(ScheduleError::FieldCount {
                schedule: schedule.to_string(),
                found: texts.len(),
            });
        }
        let field = |i: usize| parse_field(FieldName::ALL[i], texts[i]);
        let parsed = Schedule {
            minute: field(0)?,
            hour: field(1)?,
            day_of_month: field(2)?,
            month: field(3)?,
            day_of_week: field(4)?,
        };
        parsed.check_satisfiable()?;
        Ok(parsed)
    }
}

/// A comma-separated list of `*`, `N`, `N-M`, each optionally `/STEP`.
fn parse_field(name: FieldName, text: &str) -> Result<Field, ScheduleError> {
    let (min, max) = name.bounds();
    let error = |value: &str, reason: String| ScheduleError::Field {
        field: name,
        value: value.to_string(),
        reason,
    };
    let mut values = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step =
                    step.parse::<u8>().ok().filter(|s| *s >= 1).ok_or_else(|| {
                        error(item, format!("step {step:?} is not a number from 1"))
                    })?;
                (range, Some(step))
            }
            None => (item, None),
        };
        let (start, end) = match range.split_once('-') {
            _ if range == "*" => (min, max),
            Some((start, end)) => (
                value_of(name, start).map_err(|reason| error(item, reason))?,
                value_of(name, end).map_err(|reason| error(item, reason))?,
            ),
            // `N/STEP` runs from N to the field's end.
            None => {
                let start = value_of(name, range).map_err(|reason| error(item, reason))?;
                (start, if step.is_some() { max } else { start })
            }
        };
        if start > end {
            return Err(error(
                item,
                format!("range start {start} is after its end {end}"),
            ));
        }
        for value in (start..=end).step_by(usize::from(step.unwrap_or(1))) {
            values |= 1 << value;
        }
    }
    Ok(Field {
        values,
        star: text.starts_with('*'),
    })
}

/// A number in the field's range, or a name the field accepts.
fn value_of(name: FieldName, text: &str) -> Result<u8, String> {
    let (min, max) = name.bounds();
    if let Ok(number) = text.parse::<u32>() {
        return match u8::try_from(number) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!("out of range {min}-{max}")),
        };
    }
    let names = name.names();
    names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
        .and_then(|i| u8::try_from(i).ok())
        .map(|i| min + i)
        .ok_or_else(|| match (names.first(), names.last()) {
            (Some(first), Some(last)) => {
                format!("not a number ({min}-{max}) or a name ({first}-{last})")
            }
            _ => format!("not a number ({min}-{max})"),
        })
}

impl Schedule {
    /// A schedule whose only day-of-month values are past the end of every month it
    /// names (`0 0 30 2 *`) would never run: refused, as a likely mistake.
    fn check_satisfiable(&self) -> Result<(), ScheduleError> {
        if self.day_of_month.star || !self.day_of_week.star {
            // Every day, or the day of week alone can match.
            return Ok(());
        }
        // The longest each month can be (February in a leap year).
        const LONGEST: [i8; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let first_day = self.day_of_month.ascending().next().unwrap_or(1);
        let months: Vec<i8> = self.month.ascending().collect();
        let fits = months
            .iter()
            .any(|m| LONGEST[usize::try_from(m - 1).unwrap_or(0)] >= first_day);
        if fits {
            return Ok(());
        }
        let names = FieldName::Month.names();
        Err(ScheduleError::Never {
            day: u8::try_from(first_day).unwrap_or(0),
            months: months
                .iter()
                .filter_map(|m| names.get(usize::try_from(m - 1).ok()?))
                .copied()
                .collect::<Vec<_>>()
                .join(","),
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        if !self.month.has(date.month()) {
            return false;
        }
        let by_month_day = self.day_of_month.has(date.day());
        let by_week_day = self.day_of_week.has(date.weekday().to_sunday_zero_offset());
        match (self.day_of_month.star, self.day_of_week.star) {
            (false, false) => by_month_day || by_week_day,
            _ => by_month_day && by_week_day,
        }
    }

    /// The first instant strictly after `after` that the schedule matches in `tz`,
    /// if there is one in the next few years.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // Wall-clock times earlier than this map to instants before `after`.
        let floor = tz.to_datetime(after).checked_sub(MAX_OFFSET_JUMP).ok()?;
        let mut best: Option<Timestamp> = None;
        let mut date = floor.date();
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(date) {
                for time in self.times_on(date, false) {
                    if time < floor {
                        continue;
                    }
                    let instants = instants_of(time, tz);
                    match (best, instants.first()) {
                        // Later wall-clock times map to later instants.
                        (Some(found), Some(earliest)) if *earliest > found => return best,
                        _ => {}
                    }
                    best = instants
                        .into_iter()
                        .filter(|i| *i > after)
                        .chain(best)
                        .min();
                }
            }
            date = date.tomorrow().ok()?;
        }
        best
    }

    /// The last instant at or before `at` that the schedule matches in `tz`, if there
    /// is one in the past few years.
    pub fn last_at_or_before(&self, at: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let ceiling = tz.to_datetime(at).checked_add(MAX_OFFSET_JUMP).ok()?;
        let mut best: Option<Timestamp> = None;
        let mut date = ceiling.date();
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(date) {
                for time in self.times_on(date, true) {
                    if time > ceiling {
                        continue;
                    }
                    let instants = instants_of(time, tz);
                    match (best, instants.last()) {
                        (Some(found), Some(latest)) if *latest < found => return best,
                        _ => {}
                    }
                    best = instants.into_iter().filter(|i| *i <= at).chain(best).max();
                }
            }
            date = date.yesterday().ok()?;
        }
        best
    }

    /// The matching wall-clock times of a matching day, in order (or reversed).
    fn times_on(&self, date: Date, reversed: bool) -> Vec<DateTime> {
        let mut times: Vec<DateTime> = self
            .hour
            .ascending()
            .flat_map(|h| self.minute.ascending().map(move |m| date.at(h, m, 0, 0)))
            .collect();
        if reversed {
            times.reverse();
        }
        times
    }
}

/// The instants a wall-clock time names in `tz`, earliest first: none in a gap,
/// two in a fold.
fn instants_of(time: DateTime, tz: &TimeZone) -> Vec<Timestamp> {
    let offsets = match tz.to_ambiguous_timestamp(time).offset() {
        AmbiguousOffset::Unambiguous { offset } => vec![offset],
        AmbiguousOffset::Gap { .. } => vec![],
        AmbiguousOffset::Fold { before, after } => vec![before, after],
    };
    let mut instants: Vec<Timestamp> = offsets
        .into_iter()
        .filter_map(|offset| offset.to_timestamp(time).ok())
        .collect();
    instants.sort();
    instants
}

#[cfg(test)]
mod tests;
