//! How a backend that keeps rollups reads a window `[since, until)` exactly: which whole
//! buckets of which rollup level, and which edge ranges of the log itself. Written once for
//! every such backend (SQLite, PostgreSQL); each gives its own levels.
//!
//! Times are microseconds since the epoch; a bucket `b` of a level of width `w` holds
//! `[b * w, (b + 1) * w)`. `None` is an open end.

/// A rollup level: buckets of a fixed width.
pub trait RollupLevel: Copy {
    /// The width of a bucket, microseconds (> 0).
    fn width_us(&self) -> i64;
}

/// A piece of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPart<L> {
    /// Whole buckets `[first, last)` of a level (bucket numbers; `None` open).
    Buckets(L, Option<i64>, Option<i64>),
    /// The records of the log in `[from, to)` (microseconds; `None` open).
    Scan(Option<i64>, Option<i64>),
}

/// Splits `[since, until)` over `levels`, coarse to fine: whole buckets of the first level,
/// then the rest at either end with the finer levels; what no level covers whole is scanned
/// from the log. The parts are disjoint and together are the window.
pub fn plan_window<L: RollupLevel>(
    levels: &[L],
    since: Option<i64>,
    until: Option<i64>,
) -> Vec<WindowPart<L>> {
    let Some((level, finer)) = levels.split_first() else {
        return vec![WindowPart::Scan(since, until)];
    };
    let w = level.width_us();
    let first = since.map(|s| s.div_euclid(w) + i64::from(s.rem_euclid(w) != 0));
    let last = until.map(|u| u.div_euclid(w));
    if let (Some(f), Some(l)) = (first, last) {
        if f >= l {
            return plan_window(finer, since, until);
        }
    }
    let mut out = vec![WindowPart::Buckets(*level, first, last)];
    if let (Some(s), Some(f)) = (since, first) {
        if s < f * w {
            out.extend(plan_window(finer, Some(s), Some(f * w)));
        }
    }
    if let (Some(u), Some(l)) = (until, last) {
        if l * w < u {
            out.extend(plan_window(finer, Some(l * w), Some(u)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000_000;
    const H: i64 = 60 * M;
    const D: i64 = 24 * H;

    /// A level of the tests: its width.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Level(i64);

    impl RollupLevel for Level {
        fn width_us(&self) -> i64 {
            self.0
        }
    }

    const DAILY: Level = Level(D);
    const HOURLY: Level = Level(H);
    const MINUTELY: Level = Level(M);

    fn hourly(since: Option<i64>, until: Option<i64>) -> Vec<WindowPart<Level>> {
        plan_window(&[HOURLY], since, until)
    }

    #[test]
    fn windows_split_into_whole_hours_and_edges() {
        let h = H;
        let hours = |f, l| WindowPart::Buckets(HOURLY, f, l);
        let scan = |f, t| WindowPart::Scan(f, t);
        assert_eq!(hourly(None, None), vec![hours(None, None)]);
        assert_eq!(hourly(Some(2 * h), None), vec![hours(Some(2), None)]);
        assert_eq!(
            hourly(Some(2 * h + 5), None),
            vec![hours(Some(3), None), scan(Some(2 * h + 5), Some(3 * h))]
        );
        assert_eq!(hourly(None, Some(5 * h)), vec![hours(None, Some(5))]);
        assert_eq!(
            hourly(None, Some(5 * h + 1)),
            vec![hours(None, Some(5)), scan(Some(5 * h), Some(5 * h + 1))]
        );
        assert_eq!(
            hourly(Some(h + 1), Some(3 * h + 1)),
            vec![
                hours(Some(2), Some(3)),
                scan(Some(h + 1), Some(2 * h)),
                scan(Some(3 * h), Some(3 * h + 1))
            ]
        );
        assert_eq!(
            hourly(Some(h + 1), Some(h + 7)),
            vec![scan(Some(h + 1), Some(h + 7))]
        );
        assert_eq!(
            hourly(Some(h + 1), Some(2 * h + 7)),
            vec![scan(Some(h + 1), Some(2 * h + 7))]
        );
        assert_eq!(
            hourly(Some(-h - 1), Some(0)),
            vec![hours(Some(-1), Some(0)), scan(Some(-h - 1), Some(-h))]
        );
    }

    #[test]
    fn long_windows_read_days_then_hours_then_minutes_then_the_log() {
        let (d, h, m) = (D, H, M);
        let levels = [DAILY, HOURLY, MINUTELY];
        assert_eq!(
            plan_window(&levels, None, None),
            vec![WindowPart::Buckets(DAILY, None, None)]
        );
        assert_eq!(
            plan_window(
                &levels,
                Some(d + 2 * h + 3 * m + 5),
                Some(5 * d + 3 * h + 7 * m)
            ),
            vec![
                WindowPart::Buckets(DAILY, Some(2), Some(5)),
                WindowPart::Buckets(HOURLY, Some(27), Some(48)),
                WindowPart::Buckets(MINUTELY, Some(26 * 60 + 4), Some(27 * 60)),
                WindowPart::Scan(Some(d + 2 * h + 3 * m + 5), Some(d + 2 * h + 4 * m)),
                WindowPart::Buckets(HOURLY, Some(120), Some(123)),
                WindowPart::Buckets(MINUTELY, Some(123 * 60), Some(123 * 60 + 7)),
            ]
        );
        // Within one minute: a scan alone.
        assert_eq!(
            plan_window(&levels, Some(d + 5), Some(d + 9)),
            vec![WindowPart::Scan(Some(d + 5), Some(d + 9))]
        );
    }
}
