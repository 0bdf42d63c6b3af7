//! What numbers a user may write: the bounds every input is checked against where it is
//! parsed (flags, scenario steps, matrix files), and that `engine::case::check` enforces again.

use std::ops::RangeInclusive;

/// vCPUs of a guest: QEMU's `virt` machine takes at most 512 (`engine::case` checks the
/// same bounds).
pub const SMP: RangeInclusive<u32> = 1..=512;
/// Guest memory in MiB: under 16 not even the firmware starts; over 1 TiB is more than any
/// host this runs on has (`engine::case` checks the same bounds).
pub const MEMORY_MIB: RangeInclusive<u32> = 16..=1 << 20;
/// Runs of each matrix cell: enough to measure how often a flaky cell crashes; more is a
/// typo that would keep a host busy for months.
pub const REPEAT: RangeInclusive<u32> = 1..=100;
/// VMs at once: each needs at least a host core under TCG, and no host this runs on has
/// more than a few hundred.
pub const CONCURRENCY: RangeInclusive<usize> = 1..=256;
/// Cells of one matrix (the product of its axes, before exclusions). At a minute or more
/// per cell under TCG, more is weeks of machine time: a generated axis gone wrong.
pub const MAX_CELLS: usize = 10_000;
/// A `run` step's `expect_exit`: a shell's exit status is 0 to 255.
pub const EXIT_STATUS: RangeInclusive<i32> = 0..=255;

/// "`what` must be an integer from A to B, not V".
pub fn out_of_range<T: std::fmt::Display>(
    what: &str,
    range: &RangeInclusive<T>,
    v: &dyn std::fmt::Display,
) -> String {
    format!(
        "{what} must be an integer from {} to {}, not {v}",
        range.start(),
        range.end()
    )
}

/// A TOML value as an integer in `range`; floats (`1e30`, `inf`, `nan`), strings and
/// integers that do not fit are refused with the same message.
pub fn integer<T>(what: &str, v: &toml::Value, range: &RangeInclusive<T>) -> Result<T, String>
where
    T: TryFrom<i64> + PartialOrd + std::fmt::Display + Copy,
{
    match v {
        toml::Value::Integer(i) => match T::try_from(*i) {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(out_of_range(what, range, i)),
        },
        other => Err(out_of_range(what, range, other)),
    }
}

/// A TOML number as seconds (integers and floats; [`crate::engine::step::seconds`] checks
/// the range).
pub fn seconds(what: &str, v: &toml::Value) -> Result<std::time::Duration, String> {
    let n = match v {
        toml::Value::Integer(i) => *i as f64,
        toml::Value::Float(f) => *f,
        other => {
            return Err(format!(
                "{what} must be a positive number of seconds, not {other}"
            ));
        }
    };
    crate::engine::step::seconds(n).map_err(|e| format!("{what} {e}"))
}
